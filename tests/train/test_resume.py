"""Exact continuation in the combinations tests/train/test_checkpoint.py leaves out: a run stopped
and continued (a second ``fit()``, a resume) equals the run that never stopped, bit for bit."""

import sys
import types

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import Callback, Trainer, seed_everything

from .models import TinyLM, tokens


def _trainer(max_steps, **kw):
    seed_everything(0)
    model = TinyLM(dropout=0.3)  # masks from the global RNG
    opt = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.5)
    tr = Trainer(model, opt, max_steps=max_steps, max_epochs=10, val_every=3, log_every=2, progress=False,
                 **kw)  # fmt: skip
    return tr, model


def _fit(tr):
    # variable windows drawn from the global RNG: the data order depends on it too
    data = bptt_batches(tokens(400), 3, 10, variable_length=True, min_len=4, std=3)
    return tr.fit(data, bptt_batches(tokens(60, seed=9), 1, 10))


def test_a_second_fit_after_a_mid_epoch_stop_goes_on_from_the_stop():
    """A fit() stopped by max_steps inside an epoch, then extended by a second fit() of the same
    trainer (docs/train.md: "a second fit() of the same trainer ... extending a finished run is
    exact too"), is the run of one fit(). Before, the second fit() started that epoch again from
    its first batch, with a fresh state, and retrained the batches the first one had trained."""
    for kw in ({}, {"nt_asgd": True, "nonmono": 1}):
        ref, ref_model = _trainer(24, **kw)
        _fit(ref)
        tr, model = _trainer(7, **kw)  # ~16 windows an epoch: step 7 is inside the first
        _fit(tr)
        assert (tr.step, tr.batch_in_epoch) == (7, 7)
        tr.config.max_steps = 24
        out = _fit(tr)
        assert (out["step"], tr.epoch) == (24, ref.epoch)
        assert tr.losses == ref.losses, kw
        val = lambda t: [r for r in t.history if r["split"] == "val"]  # noqa: E731
        assert val(tr) == val(ref)
        for a, b in zip(ref_model.parameters(), model.parameters(), strict=True):
            assert torch.equal(a, b), kw


class _Stop(Callback):
    def on_step_end(self, trainer, logs):
        if trainer.step == 8:  # after the checkpoint of step 6, its validation and the row of step 7
            raise KeyboardInterrupt


def test_tensorboard_of_a_resumed_run_holds_each_point_once(tmp_path, monkeypatch):
    """The resumed run writes again the TensorBoard points of the steps after its checkpoint, which
    the killed run had written already: its writer is opened with ``purge_step`` (TensorBoard then
    hides the earlier events of that step on), and the checkpoint step's own rows are written again
    (its epoch-end validation, not in the checkpoint's history, comes again). Before, each redone
    point showed twice, the killed run's beside the resumed run's."""
    events: dict[str, list] = {}  # log_dir -> [(tag, step, value)], what TensorBoard shows

    class SummaryWriter:  # torch.utils.tensorboard's, as TensorBoard reads its files
        def __init__(self, log_dir, purge_step=None):
            self.shown = events.setdefault(log_dir, [])
            if purge_step is not None:
                self.shown[:] = [e for e in self.shown if e[1] < purge_step]

        def add_scalar(self, tag, value, step):
            self.shown.append((tag, step, value))

        def flush(self): ...

        def close(self): ...

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter)
    )

    def run(out, callbacks=(), resume=False):
        seed_everything(0)
        model = TinyLM(dropout=0.3)
        tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), max_epochs=2, log_every=1,
                     checkpoint_every=6, out_dir=str(out), resume=resume, callbacks=callbacks, progress=False,
                     plot=False)  # fmt: skip
        # 6 windows an epoch: the checkpoint of step 6 comes before the first epoch's validation
        tr.fit(bptt_batches(tokens(120), 2, 10), bptt_batches(tokens(40, seed=9), 1, 10))

    run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", [_Stop()])
    run(tmp_path / "run", resume=True)
    timing = ("train/tokens_per_s", "train/elapsed_s")
    shown = {k: sorted((e[:2], e[2]) for e in v if e[0] not in timing) for k, v in events.items()}
    ref, got = shown[str(tmp_path / "ref" / "tensorboard")], shown[str(tmp_path / "run" / "tensorboard")]
    assert [e[0] for e in got] == [e[0] for e in ref]  # each (tag, step) once
    assert got == ref
