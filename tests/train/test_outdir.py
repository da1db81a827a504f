"""The trainer's output directory: resume without a checkpoint, the lock, stale temporaries."""

import json
import logging
import math
import shutil

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import Trainer, list_checkpoints, lm_loss, read_metrics
from rnnkit.train.checkpoint import sweep_temporaries

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


def test_a_second_trainer_on_an_out_dir_in_use_is_refused(tmp_path):
    """The --out lock guarded CLI runs only: a Trainer from the Python API (another process, another
    notebook) wrote into a directory another was training in, mixing checkpoints and metrics."""
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"split": "train", "step": 1}\n')  # the other run's
    with open(out / ".lock", "a") as other:  # what another process holds while it trains
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match=rf"{out}.* in use"):
            _trainer(out, max_steps=2, checkpoint_every=1).fit(_data())
        assert (out / "metrics.jsonl").read_text() == '{"split": "train", "step": 1}\n'
        assert not (out / "checkpoints").exists()
    tr = _trainer(out, max_steps=2)  # once it is gone
    tr.fit(_data())
    assert tr.step == 2
    with open(out / ".lock", "a") as after:  # and fit() let it go
        fcntl.flock(after, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_the_lock_is_shared_with_this_process_holding_it(tmp_path):
    """The CLI holds --out around the whole command; the Trainer it makes takes the same lock."""
    pytest.importorskip("fcntl")
    from rnnkit.train.outdir import lock_out_dir, unlock_out_dir

    out = tmp_path / "run"
    out.mkdir()
    lock_out_dir(out)
    try:
        tr = _trainer(out, max_steps=2)
        tr.fit(_data())
        tr.fit(_data())  # again, and a second trainer after it: one process's runs take turns
        _trainer(out, max_steps=3, resume=True).fit(_data())
    finally:
        unlock_out_dir(out)


@pytest.mark.parametrize("where", ["file", "file/run", "link"])
def test_an_out_dir_that_cannot_be_a_directory_is_named(tmp_path, where):
    """Trainer(out_dir=...) from the Python API failed with mkdir's bare "[Errno 20] Not a directory"
    or "[Errno 17] File exists", which named neither out_dir nor what was in the way (the CLI's
    --out check did); nothing was written and no step was taken."""
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    out = tmp_path / where
    tr = _trainer(out, max_steps=2)
    with pytest.raises(NotADirectoryError, match=r"out_dir .*(file|link).* not a directory") as e:
        tr.fit(_data())
    assert str(out) in str(e.value) and tr.step == 0
    assert (tmp_path / "file").read_text() == "not a directory" and not (tmp_path / "gone").exists()


def test_stale_temporaries_of_killed_checkpoint_writes_are_swept_at_fit_start(tmp_path):
    """A process killed inside save_checkpoint leaves its temporary directory (or the trash of a
    rotation, or the temp file of `latest`) behind: nothing removed them, and they piled up."""
    ckpts = tmp_path / "run" / "checkpoints"
    stale = [".tmp-step-000000005-k2j_x9aa", ".old-step-000000003-0q1w2e3r"]
    for name in stale:
        (ckpts / name).mkdir(parents=True)
        (ckpts / name / "model.safetensors").write_bytes(b"half")
    (ckpts / ".latest-a1b2c3d4").write_text("step-000000005")
    # not the writer's temporaries: kept
    kept = [".tmp-step-000000005", ".tmp-notes-abc", "notes.txt", ".latest", "latest.bak"]
    for name in kept:
        (ckpts / name).write_text("mine")
    _trainer(tmp_path / "run", max_steps=2).fit(_data())
    assert sorted(p.name for p in ckpts.iterdir()) == sorted([*kept, "latest", "step-000000002"])


def test_a_resave_killed_between_its_renames_keeps_the_step(tmp_path):
    """Re-saving a step moves the old copy to a trash directory, then the new one into place: a
    kill between the two left the step only among the temporaries, and the sweep deleted it."""
    out = tmp_path / "run"
    _trainer(out, max_steps=2).fit(_data())
    ckpts = out / "checkpoints"
    step = ckpts / "step-000000002"
    files = sorted(p.name for p in step.iterdir())
    trash = ckpts / ".old-step-000000002-x1y2z3w4"
    trash.mkdir()
    step.rename(trash / step.name)  # the first rename done, the second (a .tmp-step-*) not
    (ckpts / ".tmp-step-000000002-a9b8c7d6").mkdir()
    assert sorted(sweep_temporaries(ckpts)) == [trash, ckpts / ".tmp-step-000000002-a9b8c7d6"]
    assert sorted(p.name for p in step.iterdir()) == files
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000000002"]
    tr = _trainer(out, max_steps=3, resume=True)
    tr.fit(_data())
    assert tr.step == 3


def test_a_rotation_killed_in_its_delete_does_not_bring_the_step_back(tmp_path):
    """Rotation moves an old step into a .old-step-* trash before deleting it (so that a kill in the
    delete leaves no step-* with its state.json but not its weights): the sweep must not restore
    that one (only a re-save's old copy), a half-deleted one least of all."""
    out = tmp_path / "run"
    _trainer(out, max_steps=3, checkpoint_every=1, keep_last=2).fit(_data())
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000000002", "step-000000003"]
    trash = ckpts / ".old-step-000000001-x1y2z3w4"
    half = trash / "step-000000001"  # the rotated step, its weights already deleted
    half.mkdir(parents=True)
    (half / "state.json").write_text((ckpts / "step-000000002" / "state.json").read_text())
    assert sweep_temporaries(ckpts) == [trash]
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000000002", "step-000000003"]


def _strict_rows(path):
    """Every line parsed as strict JSON (what jq or JavaScript's JSON.parse accept)."""

    def bad(token):
        raise AssertionError(f"{path.name}: {token} is not JSON")

    return [json.loads(line, parse_constant=bad) for line in path.read_text().splitlines()]


def test_metrics_jsonl_of_a_diverged_run_is_strict_json_and_reads_back(tmp_path):
    """A diverged loss was written as a bare NaN/Infinity token: no JSON parser but Python's reads it."""
    calls = []

    def div(out, tgt):  # inf, then NaN (the updates of non-finite gradients are skipped: no NaN weights)
        calls.append(1)
        return lm_loss(out, tgt) * (math.inf if len(calls) == 1 else math.nan)

    tr = _trainer(tmp_path, max_steps=4, log_every=1, loss_fn=div)
    tr.fit(_data(), _data())
    rows = _strict_rows(tmp_path / "metrics.jsonl")
    assert rows[0]["loss"] is None and rows[0]["nonfinite"]["loss"] == "inf"
    assert any(r["nonfinite"].get("loss") == "nan" for r in rows)
    back = read_metrics(tmp_path / "metrics.jsonl")
    assert back[0]["loss"] == math.inf and "nonfinite" not in back[0]
    assert [(r["split"], r["step"]) for r in back] == [(r["split"], r["step"]) for r in tr.history]
    for got, want in zip(back, tr.history, strict=True):
        for k, v in want.items():
            assert got[k] == v or (math.isnan(got[k]) and math.isnan(v)), (k, got[k], v)


def test_new_public_names_are_exported_with_their_siblings():
    """read_metrics, sweep_temporaries (beside save/load/list_checkpoints) and OutDirInUse (what
    Trainer.fit raises) are importable from rnnkit.train, as the docs name them."""
    import rnnkit.train as train
    from rnnkit.train.checkpoint import sweep_temporaries as sweep
    from rnnkit.train.outdir import OutDirInUse

    for name in ("read_metrics", "sweep_temporaries", "OutDirInUse"):
        assert name in train.__all__, name
    assert train.sweep_temporaries is sweep and train.OutDirInUse is OutDirInUse


def test_rank_0_sweeps_before_the_ranks_look_for_the_checkpoint(tmp_path, monkeypatch):
    """Under DDP the other ranks go on to find the checkpoint to resume from once claim_out_dir's
    all-reduce returns: rank 0 swept after it, so a step it moves back (a killed re-save's) could
    still be missing for them (they resumed from an older step, or from scratch, rank 0 from it)."""
    from rnnkit.train import distributed as dist
    from rnnkit.train.outdir import claim_out_dir, unlock_out_dir

    out = tmp_path / "run"
    _trainer(out, max_steps=2).fit(_data())
    ckpts = out / "checkpoints"
    step = ckpts / "step-000000002"
    trash = ckpts / ".old-step-000000002-x1y2z3w4"
    trash.mkdir()
    step.rename(trash / step.name)
    seen = []

    def all_reduce_max(value, device=None):  # where the other ranks wait for rank 0
        seen.append(step.is_dir())
        return value

    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "is_main_process", lambda: True)
    monkeypatch.setattr(dist, "all_reduce_max", all_reduce_max)
    assert claim_out_dir(out)
    unlock_out_dir(out)
    assert seen == [True]


def _as_rank(monkeypatch, rank: int, reduced: float = 0.0) -> list[float]:
    """Run as DDP rank ``rank`` of two: rank 0's all-reduce returns its own value (the max over the
    ranks; the values sent are appended to the returned list), another rank's returns ``reduced``."""
    from rnnkit.train import distributed as dist

    sent: list[float] = []

    def all_reduce_max(value, device=None):
        sent.append(value)
        return value if rank == 0 else reduced

    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "all_reduce_max", all_reduce_max)
    monkeypatch.setattr(dist, "is_main_process", lambda: rank == 0)
    return sent


def test_every_rank_raises_when_rank_0_cannot_claim_out_dir(tmp_path, monkeypatch):
    """An out_dir rank 0 cannot make (a file in its place) raised on rank 0 alone, before the
    all-reduce the other ranks wait in (a hang); a failure is now all-reduced like a held lock."""
    from rnnkit.train.outdir import OutDirInUse, claim_out_dir

    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "file" / "run"
    reduced = _as_rank(monkeypatch, 0)
    with pytest.raises(OSError):
        claim_out_dir(out)
    assert reduced == [2.0]
    # another rank, told by the all-reduce that rank 0 failed, raises too (not OutDirInUse)
    _as_rank(monkeypatch, 1, reduced=2.0)
    with pytest.raises(RuntimeError, match="rank 0 could not lock or sweep") as e:
        claim_out_dir(out)
    assert not isinstance(e.value, OutDirInUse)
    _as_rank(monkeypatch, 1, reduced=1.0)
    with pytest.raises(OutDirInUse, match="in use by another rnnkit training process"):
        claim_out_dir(out)


def test_every_rank_raises_rank_0s_refusal_of_an_earlier_runs_checkpoints(tmp_path, monkeypatch):
    """A new run into an out_dir holding checkpoints: rank 0's FileExistsError is all-reduced as a
    refusal of its own, and every other rank raises the same FileExistsError (before, a RuntimeError
    saying rank 0 could not lock or sweep: a script catching the FileExistsError caught it on rank 0
    alone)."""
    from rnnkit.train.outdir import claim_out_dir

    out = tmp_path / "run"
    _trainer(out, max_steps=2).fit(_data())
    reduced = _as_rank(monkeypatch, 0)
    with pytest.raises(FileExistsError) as on_rank_0:
        claim_out_dir(out, new_run=True)
    assert reduced == [3.0]
    _as_rank(monkeypatch, 1, reduced=3.0)
    with pytest.raises(FileExistsError) as on_rank_1:
        claim_out_dir(out, new_run=True)
    assert str(on_rank_1.value) == str(on_rank_0.value)
    assert "holds the checkpoints of an earlier run (latest: step-000000002)" in str(on_rank_1.value)


def test_a_run_refused_by_the_lock_leaves_no_tensorboard_files(tmp_path, monkeypatch):
    """TensorBoardLogger opened its writer (an event file in out_dir/tensorboard) when the trainer
    was built, before fit() took out_dir's lock: a run refused there left its files behind, among
    the other process's. The writer opens at fit's start now, under the lock."""
    import fcntl
    import sys
    import types

    from rnnkit.train.outdir import OutDirInUse

    class SummaryWriter:  # what torch.utils.tensorboard's writer does first: create its event file
        def __init__(self, log_dir, purge_step=None):
            (tmp_path / "out" / "tensorboard").mkdir(parents=True, exist_ok=True)
            (tmp_path / "out" / "tensorboard" / "events.out.tfevents.x").write_text("")
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, step))

        def flush(self): ...

        def close(self): ...

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter)
    )
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "a") as other:  # another process trains there
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tr = _trainer(out, max_steps=2, tensorboard=True, log_every=1)
        with pytest.raises(OutDirInUse):
            tr.fit(_data())
        assert not (out / "tensorboard").exists()
    tr.fit(_data())  # once it is free: the writer opens and logs
    (tb,) = [cb for cb in tr.callbacks if type(cb).__name__ == "TensorBoardLogger"]
    assert (out / "tensorboard").is_dir() and tb.writer is None  # closed at fit's end


def test_a_new_run_refuses_an_out_dir_holding_an_earlier_runs_checkpoints(tmp_path):
    """A new run (not resumed) in an out_dir holding an earlier run's checkpoints wrote its own among
    them: with keep_last the earlier ones below its step stayed, and until its first checkpoint
    `latest` named the earlier run's, so a kill there and a resume=True continued the earlier run.
    It is refused now, before anything is written (as the CLI refuses an --out without --resume):
    the earlier run's work is kept, and resume=True continues it."""
    out = tmp_path / "run"
    kw = {"max_epochs": 10, "checkpoint_every": 5, "keep_last": None}
    _trainer(out, max_steps=20, **kw).fit(_data())
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    new = _trainer(out, max_steps=6, **kw)
    refusal = r"earlier run \(latest: step-000000020\); to continue that run pass resume=True"
    with pytest.raises(FileExistsError, match=refusal):
        new.fit(_data())
    assert new.step == 0 and sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    tr = _trainer(out, max_steps=25, resume=True, **kw)
    tr.fit(_data())  # the earlier run goes on
    assert tr.step == 25 and list_checkpoints(out / "checkpoints")[-1].name == "step-000000025"
    tr = _trainer(out, max_steps=25, **kw)
    tr.load(out / "checkpoints")  # a loaded checkpoint goes on too: not a new run
    tr.fit(_data())
    shutil.rmtree(out / "checkpoints")
    _trainer(out, max_steps=6, **kw).fit(_data())  # once they are gone: a new run


@pytest.mark.parametrize("resume", [False, True])
def test_going_on_from_another_dirs_checkpoint_refuses_an_out_dir_of_another_run(tmp_path, resume):
    """load(other_dir's checkpoint) then fit() into an out_dir holding another run's checkpoints was
    not refused: the two runs' checkpoints mixed and `latest` named the other run's until the first
    save. It is refused as a new run is, before anything is written; into an out_dir without
    checkpoints it goes on, and an earlier run's best/ there (not this run's) goes, as for a new run."""
    kw = {"max_epochs": 10, "checkpoint_every": 5, "keep_last": None}
    a, b = tmp_path / "a", tmp_path / "b"
    _trainer(a, max_steps=10, **kw).fit(_data())
    _trainer(b, max_steps=20, **kw).fit(_data())
    before = sorted(p.name for p in (b / "checkpoints").iterdir())
    tr = _trainer(b, max_steps=15, resume=resume, **kw)
    tr.load(a / "checkpoints")
    with pytest.raises(FileExistsError, match=r"earlier run \(latest: step-000000020\)") as e:
        tr.fit(_data())
    # (resume=True continues that run, not this one: the message said to pass it, alone)
    assert "without loading another directory's checkpoint" in str(e.value)
    assert "choose another out_dir" in str(e.value)
    assert tr.step == 10 and sorted(p.name for p in (b / "checkpoints").iterdir()) == before
    shutil.rmtree(b / "checkpoints")
    (b / "best" / "step-000000003").mkdir(parents=True)  # an earlier run's best (before step 10)
    (b / "best" / "step-000000003" / "state.json").write_text("{}")
    tr = _trainer(b, max_steps=15, resume=resume, **kw)
    tr.load(a / "checkpoints")
    tr.fit(_data())
    assert tr.step == 15 and [p.name for p in list_checkpoints(b / "checkpoints")] == ["step-000000015"]
    assert not (b / "best").exists()
