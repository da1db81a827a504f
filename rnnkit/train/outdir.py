"""A training run's output directory: one writing process at a time.

``out_dir/.lock`` is held with ``flock`` while a :class:`~rnnkit.train.Trainer` fits (rank 0) and
while ``rnnkit train`` runs: a second run into the same directory would delete the first's
``metrics.jsonl``, interleave its rows and write checkpoints among its own. The lock goes with
the process, even a killed one. Within one process it is shared (counted): the CLI holds it around
the whole command and its trainer takes it again, and a notebook's trainers take turns. Holding
it, a run sweeps what killed checkpoint writes left (:func:`claim_out_dir`).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["OutDirInUse", "lock_out_dir", "unlock_out_dir", "claim_out_dir", "not_a_directory"]

log = logging.getLogger("rnnkit.train")

LOCK_FILE = ".lock"
# out_dir (resolved) -> [the open lock file, how many holders in this process]. flock belongs to
# an open file: a second open() of .lock by this process would be refused like another process.
_HELD: dict[str, list[Any]] = {}


class OutDirInUse(RuntimeError):
    """``out_dir`` is locked by another process that trains into it."""


def not_a_directory(out: str | os.PathLike) -> str | None:
    """Why ``out`` cannot be an output directory, said of it (``--out OUT`` then this: "is a file,
    not a directory", "is inside F, a file, not a directory", "is a broken symbolic link to T, not
    a directory"), or ``None`` when it is a directory or can be made one. mkdir said only "[Errno
    17] File exists" or "[Errno 20] Not a directory"."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():  # (False also for a path under a file)
            if p.is_dir():
                return None
            what = "a file"
        elif p.is_symlink():  # dangling: mkdir neither makes its target nor replaces it ("File exists")
            what = f"a broken symbolic link to {os.readlink(p)}"
        else:
            continue
        return f"is {what}, not a directory" if p == out else f"is inside {p}, {what}, not a directory"
    return None


def _key(out: str | os.PathLike) -> str:
    return os.path.realpath(out)


def lock_out_dir(out: str | os.PathLike) -> None:
    """Create ``out`` if needed and hold ``out/.lock``; raises :class:`OutDirInUse` naming ``out``
    when another process holds it, and ``NotADirectoryError`` naming ``out`` when it cannot be a
    directory (:func:`not_a_directory`). Pair each call with :func:`unlock_out_dir`."""
    # checked first: mkdir's "[Errno 20] Not a directory" / "[Errno 17] File exists" named neither
    # out_dir nor what is in the way (the CLI checks --out itself; Trainer(out_dir=...) gets here)
    if why := not_a_directory(out):
        raise NotADirectoryError(f"out_dir {out} {why}; choose another out_dir")
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    key = _key(out)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    Path(out).mkdir(parents=True, exist_ok=True)
    f = open(Path(out) / LOCK_FILE, "a")  # noqa: SIM115 - held until unlock_out_dir
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise OutDirInUse(
            f"{out} is in use by another rnnkit training process (it holds {Path(out) / LOCK_FILE}); "
            "wait for it or choose another output directory"
        ) from None
    _HELD[key] = [f, 1]


def unlock_out_dir(out: str | os.PathLike) -> None:
    """Let go of one :func:`lock_out_dir` of ``out``; the last one releases the lock."""
    held = _HELD.get(_key(out))
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[_key(out)]
        held[0].close()


def claim_out_dir(
    out: str | os.PathLike | None, device: torch.device | None = None, new_run: bool = False
) -> bool:
    """What ``Trainer.fit`` does first: rank 0 locks ``out`` and sweeps the temporaries of killed
    checkpoint writes from ``out/checkpoints`` and ``out/best`` (it is the only writer now: they
    are nobody's), and the trash of an earlier run's ``best/`` that a killed new run was deleting.
    ``new_run`` (a fit that neither resumes nor goes on from a loaded checkpoint of ``out``'s, e.g.
    one from another directory's checkpoint): an ``out`` that
    holds checkpoints is refused (``FileExistsError``), as the CLI refuses an ``--out`` without
    ``--resume``: its checkpoints are another run's work, which this run's would mix with (and
    until its first one, ``latest`` named the other run's: a resume continued that one).
    Returns whether this rank holds the lock (then :func:`unlock_out_dir` it). Under DDP every
    rank raises when rank 0 could not lock it or sweep (the others would wait for it in the first
    all-reduce), the refusal of an earlier run's checkpoints as rank 0's ``FileExistsError``, and
    rank 0 has swept when the others go on (to the checkpoint to resume from);
    ``device``: that of the all-reduce (None: CPU)."""
    from rnnkit.train import distributed as dist
    from rnnkit.train.checkpoint import sweep_temporaries

    if out is None:
        return False
    busy: Exception | None = None
    refused = False  # busy is rank 0's refusal of an earlier run's checkpoints
    if dist.is_main_process():
        try:
            lock_out_dir(out)
        except Exception as e:  # OutDirInUse, or an out_dir that cannot be made: raised below
            busy = e
        else:
            try:
                # before the all-reduce: once it returns, the other ranks look for the checkpoint
                # to resume from, and the sweep may move one back into place (a killed re-save's)
                for p in sweep_temporaries(Path(out) / "checkpoints") + sweep_temporaries(Path(out) / "best"):
                    log.info("removed %s (a checkpoint write that was killed)", p)
                for p in Path(out).glob(".old-best-*"):  # a killed Trainer.clear_best's
                    shutil.rmtree(p, ignore_errors=True)
                if new_run and (earlier := _earlier_run(Path(out))) is not None:
                    busy, refused = earlier, True
            except Exception as e:
                busy = e
            if busy is not None:
                unlock_out_dir(out)
    # every rank raises when rank 0 failed (raising there alone would leave the others waiting):
    # 1 when another process holds out_dir, 3 for the refusal of an earlier run's checkpoints, 2 for
    # any other error (rank 0 shows it)
    code = 0.0 if busy is None else 1.0 if isinstance(busy, OutDirInUse) else 3.0 if refused else 2.0
    if dist.is_distributed() and (code := dist.all_reduce_max(code, device)) and busy is None:
        if code == 1.0:
            busy = OutDirInUse(
                f"{out} is in use by another rnnkit training process (rank 0 could not lock it)"
            )
        elif code == 3.0:
            # the same refusal as rank 0's (a script catching it on each rank goes on alike): rank 0
            # has swept, so the checkpoints it found are those this rank finds
            busy = _earlier_run(Path(out)) or _refusal(Path(out), "rank 0 found them")
        else:
            busy = RuntimeError(f"rank 0 could not lock or sweep the output directory {out} (see its error)")
    if busy is not None:
        raise dist.on_every_rank(busy)
    return dist.is_main_process()


def _earlier_run(out: Path) -> FileExistsError | None:
    """The refusal of a new run in ``out`` when it holds an earlier run's checkpoints (else None)."""
    from rnnkit.train.checkpoint import latest_checkpoint

    found = latest_checkpoint(out / "checkpoints")
    if found is None:
        return None
    return _refusal(out, f"latest: {found.name}")


def _refusal(out: Path, found: str) -> FileExistsError:
    """The refusal of ``out``'s earlier checkpoints (``found``: which), for a new run and one going on
    from another directory's checkpoint alike (resume=True does not take the latter here: its
    checkpoint is not this out_dir's)."""
    return FileExistsError(
        f"{out} holds the checkpoints of an earlier run ({found}); to continue that run pass resume=True "
        "without loading another directory's checkpoint, else choose another out_dir (or delete "
        f"{out / 'checkpoints'} to start over there)"
    )
