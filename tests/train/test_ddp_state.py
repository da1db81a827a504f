"""DDP (2 gloo processes on 127.0.0.1): every rank takes the same decisions about training state."""

import json

import torch
from safetensors.torch import load_file

from . import ddp_worker
from .test_ddp import _torchrun


def _results(out_dir, n=2):
    return [json.loads((out_dir / f"result{r}.json").read_text()) for r in range(n)]


def test_ddp_resume_with_too_few_batches_on_one_rank_refuses_alike(tmp_path):
    """A resume skips the batches its epoch had consumed; rank 1's data has too few: every rank
    raises (before, rank 1 alone did, and rank 0 waited for it in the next collective)."""
    _torchrun(ddp_worker.__file__, str(tmp_path), "resume_short")
    r0, r1 = _results(tmp_path)
    assert r0["step"] == r1["step"] == 2
    want = "resume: the data has fewer than 2 batches in epoch 0 (it changed? "
    assert r0["errors"] == [want + "got 2 on this rank, 1 on another)"]
    assert r1["errors"] == [want + "got 1)"]


def test_ddp_callback_learning_rates_and_stop_reach_every_rank(tmp_path):
    """Callbacks run on rank 0 alone: the learning rates one sets, and a stop with its own reason at
    an epoch's end (its validation), must reach every rank. Before, rank 1 trained on with its old
    rates (its weights drifting from rank 0's), and a stop at an epoch's end stopped rank 0 alone
    (rank 1 waited for it in the next epoch: a hang)."""
    _torchrun(ddp_worker.__file__, str(tmp_path), "callback_state")
    stops = [json.loads((tmp_path / f"stop{r}.json").read_text()) for r in (0, 1)]
    assert stops == [[6, "tuned", [0.3, 0.05]]] * 2
    (p0, p1) = (load_file(str(tmp_path / f"params{r}.safetensors")) for r in (0, 1))
    r0, r1 = _results(tmp_path)
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 6
    for k in p0:
        torch.testing.assert_close(p0[k], p1[k], rtol=0, atol=0)
