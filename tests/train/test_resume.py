"""Exact continuation in the combinations tests/train/test_checkpoint.py leaves out: a run stopped
and continued (a second ``fit()``, a resume) equals the run that never stopped, bit for bit."""

import torch

from rnnkit.data import bptt_batches
from rnnkit.train import Trainer, seed_everything

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
