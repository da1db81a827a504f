"""DDP (2 gloo processes on 127.0.0.1): every rank takes the same decisions about training state."""

import json

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
