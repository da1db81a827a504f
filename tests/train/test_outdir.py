"""The trainer's output directory: resume without a checkpoint, the lock, stale temporaries."""

import logging

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import Trainer

from .models import TinyLM, tokens


def _trainer(out_dir, **kw):
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return Trainer(model, opt, out_dir=str(out_dir), progress=False, plot=False, **kw)


def _data():
    return bptt_batches(tokens(60), 2, 5)


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(tmp_path, caplog):
    """resume=True on an empty out_dir trains from the start (the documented idiom for a script that
    is relaunched), but it used to say nothing: a mistyped out_dir retrained silently."""
    with caplog.at_level(logging.INFO, logger="rnnkit.train"):
        _trainer(tmp_path / "run", resume=True, max_steps=2).fit(_data())
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("no checkpoint" in m and str(tmp_path / "run" / "checkpoints") in m for m in msgs), msgs
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rnnkit.train"):  # now there is one: no warning
        tr = _trainer(tmp_path / "run", resume=True, max_steps=3)
        tr.fit(_data())
    assert tr.step == 3 and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_loading_a_named_checkpoint_that_does_not_exist_names_it(tmp_path):
    tr = _trainer(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="nope"):
        tr.load(tmp_path / "nope")
