"""The metric files and TensorBoard events of a run that goes on from a checkpoint (a resume, a
new run over an old one, a checkpoint of another directory): each point once, of one run."""

import csv
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import (
    Callback,
    Trainer,
    read_metrics,
    seed_everything,
)

from .models import TinyLM, tokens


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


def test_tensorboard_of_a_new_run_over_an_old_one_shows_only_the_new_run(tmp_path, monkeypatch):
    """A new run (not resumed) into an out_dir an earlier run wrote to replaces its metrics.jsonl,
    but its writer opened without ``purge_step``: TensorBoard showed the old run's points beside
    the new one's, two curves mixed as one. It opens with ``purge_step=0`` now, which hides them."""
    shown: list = []  # what TensorBoard shows of out_dir/tensorboard: (tag, step)

    class SummaryWriter:  # torch.utils.tensorboard's, as TensorBoard reads its files
        def __init__(self, log_dir, purge_step=None):
            if purge_step is not None:
                shown[:] = [e for e in shown if e[1] < purge_step]

        def add_scalar(self, tag, value, step):
            shown.append((tag, step))

        def flush(self): ...

        def close(self): ...

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter)
    )
    for steps in (6, 3):  # a longer run, then a new one of 3 steps in the same out_dir
        model = TinyLM()
        tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), max_steps=steps, log_every=1,
                     out_dir=str(tmp_path), progress=False, plot=False)  # fmt: skip
        tr.fit(bptt_batches(tokens(200), 2, 5))
        shutil.rmtree(tmp_path / "checkpoints")  # (a new run refuses an out_dir holding checkpoints)
    assert sorted({step for tag, step in shown}) == [1, 2, 3]
    assert len(shown) == len(set(shown))  # each point once


def test_going_on_from_another_dirs_checkpoint_writes_its_own_runs_metrics(tmp_path, monkeypatch):
    """load(a's checkpoint of step 4) then fit() into b, which holds an earlier run's metric files
    and TensorBoard events (steps 1-6) but no checkpoints: the trainer takes it as a run of its
    own there (no best/ of the earlier run), but the loggers kept the earlier run's rows before step
    4, a resume's way, and wrote a's rows not at all: two runs mixed. The files now hold the fit's
    own run, as fit() returns its history: the loaded checkpoint's rows, then those it trains."""
    shown: list = []  # what TensorBoard shows of b/tensorboard: (tag, step, value)

    class SummaryWriter:  # torch.utils.tensorboard's, as TensorBoard reads its files
        def __init__(self, log_dir, purge_step=None):
            self.b = Path(log_dir).parent.name == "b"
            if purge_step is not None and self.b:
                shown[:] = [e for e in shown if e[1] < purge_step]

        def add_scalar(self, tag, value, step):
            if self.b:
                shown.append((tag, step, value))

        def flush(self): ...

        def close(self): ...

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter)
    )

    def trainer(out, steps):
        torch.manual_seed(1 if out.name == "b" else 0)
        model = TinyLM()
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), max_steps=steps, log_every=1,
                       out_dir=str(out), progress=False, plot=False, tensorboard=True)  # fmt: skip

    a, b = tmp_path / "a", tmp_path / "b"
    trainer(a, 4).fit(bptt_batches(tokens(200), 2, 5))
    trainer(b, 6).fit(bptt_batches(tokens(200, seed=5), 2, 5))  # the earlier run in b
    shutil.rmtree(b / "checkpoints")
    tr = trainer(b, 7)
    tr.load(a / "checkpoints")
    res = tr.fit(bptt_batches(tokens(200), 2, 5))
    want = [(r["split"], r["step"], r["loss"]) for r in res["history"]]
    assert [r["step"] for r in res["history"]] == list(range(1, 8))
    got = [(r["split"], r["step"], r["loss"]) for r in read_metrics(b / "metrics.jsonl")]
    assert got == want
    with open(b / "metrics.csv", newline="") as f:
        assert [(r["split"], int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)] == want
    assert sorted((step, v) for tag, step, v in shown if tag == "train/loss") == [(s, v) for _, s, v in want]
    assert len(shown) == len({e[:2] for e in shown})  # each point once
