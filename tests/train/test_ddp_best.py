"""DDP (2 gloo processes on 127.0.0.1): early stopping, save_best, the refusal of an earlier run's
out_dir and the LR scheduler take the same decisions on every rank."""

import json

import pytest

from . import ddp_best_worker
from .test_ddp import _torchrun


def _results(out_dir):
    return [json.loads((out_dir / f"result{r}.json").read_text()) for r in (0, 1)]


def test_ddp_new_run_into_an_earlier_runs_out_dir_is_refused_alike_on_every_rank(tmp_path):
    """Rank 0 finds the earlier run's checkpoints; every rank raises its FileExistsError, with its
    message (before, the other ranks raised a RuntimeError saying rank 0 could not lock or sweep:
    a script catching the FileExistsError (to resume instead) caught it on rank 0 alone)."""
    _torchrun(ddp_best_worker.__file__, str(tmp_path), "earlier_run")
    r0, r1 = _results(tmp_path)
    assert r0 == r1
    assert r0["error"] == "FileExistsError"
    assert "holds the checkpoints of an earlier run (latest: step-000000002)" in r0["message"]


def test_ddp_early_stopping_and_save_best(tmp_path):
    """Every rank stops at the same step; rank 0 alone writes best/, once a new best, with the
    weights every rank validated there; a run stopped at step 7 and resumed does the same."""
    _torchrun(ddp_best_worker.__file__, str(tmp_path), "best")
    r0, r1 = _results(tmp_path)
    assert r0 == r1
    assert r0["stop"] == [13, "early_stopping", 13, "early_stopping"]
    assert r0["best"][0] == r0["best_split"] == 10 and r0["best"][1] == r0["best"][2]
    assert r0["best_is_validated"] and r0["best_dirs"] == ["latest", "step-000000010"]
    assert r0["resumed_exact"] and len(r0["losses"]) == 13


def test_ddp_a_rank_failing_alone_through_cleanup_distributed_does_not_hang(tmp_path):
    """A script's ``try: ... finally: cleanup_distributed()`` (ddp_best_worker's run) with rank 0
    failing alone (save_best on a full disk): its teardown barrier waited for the other rank,
    which waited for it in the next collective, forever. With an exception propagating the
    barrier is skipped: rank 0 leaves, the other rank's collective fails, torchrun reports it."""
    with pytest.raises(AssertionError) as e:
        _torchrun(ddp_best_worker.__file__, str(tmp_path), "best_fails")
    assert not str(e.value).startswith("torchrun timed out"), str(e.value)[-1000:]
    assert "ChildFailedError" in str(e.value)  # (rank 1's collective failed: rank 0 had left)


def test_ddp_scheduler_steps_on_every_rank_when_one_has_no_target(tmp_path):
    """The step's target count is summed over the ranks: a rank without a target steps the
    scheduler with the others, a step without any target on no rank."""
    _torchrun(ddp_best_worker.__file__, str(tmp_path), "scheduler")
    r0, r1 = _results(tmp_path)
    assert r0 == r1 == {"None": [2, 0.125], "4": [2, 0.125]}


def test_cli_out_locked_by_another_process_is_refused_on_every_rank(tmp_path):
    """``torchrun -m rnnkit train`` into an ``--out`` another process trains in: rank 0 alone locks
    it (and writes run.json), and its refusal must reach every rank. Before, rank 0 failed there
    while rank 1 went on to the trainer's first all-reduce: both waited forever (a hang)."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    flags = ["train", "memory", "--task", "adding", "--length", "6", "--n-train", "32", "--n-valid", "8",
             "--batch-size", "8", "--hidden", "8", "--max-steps", "2", "--patience", "2", "--save-best",
             "--no-progress", "--out", str(out)]  # fmt: skip
    with open(out / ".lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(AssertionError, match="in use by another rnnkit training process") as e:
            _torchrun("-m", "rnnkit", *flags)
    assert "timed out" not in str(e.value)
    assert str(e.value).count("rnnkit: error:") == 1  # every rank refuses; rank 0 alone says so
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_cli_failure_on_rank_0_alone_ends_every_rank(tmp_path):
    """``--save-best`` under torchrun: rank 0 alone writes best/, and fails alone when it cannot
    (here ``best`` is a dangling symlink, as a full disk would fail it). Rank 0 then left through the
    process group's teardown barrier while rank 1 waited in the next step's all-reduce: a hang. A
    failed rank now leaves without it, and its exit ends the others' collective with an error."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "best").symlink_to(tmp_path / "nowhere")
    flags = ["train", "memory", "--task", "adding", "--length", "6", "--n-train", "32", "--n-valid", "8",
             "--batch-size", "8", "--hidden", "8", "--max-steps", "4", "--val-every", "1", "--save-best",
             "--no-progress", "--out", str(out)]  # fmt: skip
    with pytest.raises(AssertionError) as e:
        _torchrun("-m", "rnnkit", *flags)
    assert "timed out" not in str(e.value)
    assert "rnnkit: error:" in str(e.value) and "best" in str(e.value)


def test_cli_out_holding_a_run_is_refused_once(tmp_path):
    """``torchrun -m rnnkit train`` into an ``--out`` that holds a run, without ``--resume``: every
    rank found it and raised the refusal unmarked, so each printed it. Rank 0's finding is now
    all-reduced and the refusal raised on every rank alike: rank 0 alone prints it."""
    from rnnkit.cli import main

    out = tmp_path / "run"
    flags = ["train", "memory", "--task", "adding", "--length", "6", "--n-train", "32", "--n-valid", "8",
             "--batch-size", "8", "--hidden", "8", "--max-steps", "2", "--no-progress",
             "--out", str(out)]  # fmt: skip
    assert main(flags) == 0
    with pytest.raises(AssertionError, match="already holds a run") as e:
        _torchrun("-m", "rnnkit", *flags)
    assert "timed out" not in str(e.value)
    assert str(e.value).count("rnnkit: error:") == 1
