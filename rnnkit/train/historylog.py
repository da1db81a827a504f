"""A :class:`~rnnkit.train.Trainer`'s ``history`` (its logged rows) in its checkpoints, each row
written once.

Every checkpoint's ``state.json`` held the whole history, re-encoded at every checkpoint: ~570
bytes a row, so a run of 100k steps logged every 10 (10k rows) wrote 6.2 MB and spent ~0.6 s more
on each checkpoint, a million-step one 62 MB and ~5 s; the run's checkpoint writes grew with the
square of its length.

A checkpoint directory now holds ``history.jsonl``: the rows, one strict JSON line each
(:func:`~rnnkit.train.strictjson.strict_record`), of which the first ``bytes`` (``state.json``'s
``history_file`` entry, with the number of ``rows``) are its history. A checkpoint's file is a hard
link to the one of the checkpoint the trainer wrote or loaded before it in the same root, with the
rows logged since appended: one file for the run, each row encoded once, and every checkpoint
directory still whole (a copy of it holds its rows). A checkpoint reads its own bytes only, so
rows appended for later ones (or cut off by a crash) change nothing. A file longer than the
checkpoint it was loaded with says so (a later checkpoint's rows: loading an older one branches
off) and is not appended to: the next checkpoint writes a file of its own with all the rows.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnnkit.train.serialize import fsync_dir
from rnnkit.train.strictjson import restore_record, strict_record

__all__ = ["HISTORY_FILE", "HistoryLog", "read_history"]

HISTORY_FILE = "history.jsonl"
PutFile = Callable[[Path], None]  # writes a file into a checkpoint's temporary directory


def _line(row: dict[str, Any]) -> bytes:
    return (json.dumps(strict_record(row), allow_nan=False) + "\n").encode("utf-8")


class HistoryLog:
    """The history file of the checkpoint a trainer wrote or loaded last, and how many of its
    rows and bytes are that checkpoint's: where the next checkpoint appends."""

    def __init__(self) -> None:
        self.last: tuple[Path, int, int] | None = None  # (file, rows, bytes)

    def loaded(self, ckpt: Path, entry: dict[str, int] | None) -> None:
        """:meth:`Trainer.load` of ``ckpt``, whose ``history_file`` entry is ``entry`` (``None``:
        a checkpoint of before, its history in ``state.json``)."""
        self.last = None if entry is None else (ckpt / HISTORY_FILE, entry["rows"], entry["bytes"])

    def stage(self, root: Path, history: list[dict[str, Any]]) -> tuple[dict[str, int], PutFile]:
        """Before a checkpoint of ``history`` is written under ``root``: its ``history_file``
        entry, and what puts its ``history.jsonl`` into the checkpoint's temporary directory (a
        link to the last file, the new rows appended, or a new file). Call :meth:`saved` after."""
        last, rows = self.last, len(history)
        if last is not None and _appendable(last, root, rows):
            path, done, size = last
            new = b"".join(_line(r) for r in history[done:])
            if new:
                with open(path, "ab") as f:  # beyond the bytes of every checkpoint that has the file
                    f.write(new)
                    f.flush()
                    os.fsync(f.fileno())
            return {"rows": rows, "bytes": size + len(new)}, lambda tmp: _link(path, tmp / HISTORY_FILE)
        data = b"".join(_line(r) for r in history)

        def write(tmp: Path) -> None:
            with open(tmp / HISTORY_FILE, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        return {"rows": rows, "bytes": len(data)}, write

    def saved(self, ckpt: Path, entry: dict[str, int]) -> None:
        """The checkpoint ``ckpt`` was written with ``entry``: the next one appends to its file."""
        self.last = (ckpt / HISTORY_FILE, entry["rows"], entry["bytes"])


def _appendable(last: tuple[Path, int, int], root: Path, rows: int) -> bool:
    """Whether the next checkpoint under ``root`` can append to ``last``'s file: one of ``root``'s,
    which ends where its checkpoint's rows end (nothing of a later checkpoint there, nor of a write
    a crash cut), with no more rows than ``rows`` (a history made shorter by hand is written anew)."""
    path, done, size = last
    try:
        same_root = path.parent.parent.resolve() == root.resolve()
        return same_root and done <= rows and path.stat().st_size == size
    except OSError:  # the checkpoint was rotated out or deleted meanwhile
        return False


def _link(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (the one file a run's checkpoints share), else a copy
    (file systems without hard links)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        with open(dst, "rb+") as f:
            os.fsync(f.fileno())
    fsync_dir(dst.parent)


def read_history(ckpt: Path, entry: dict[str, int]) -> list[dict[str, Any]]:
    """The history of the checkpoint ``ckpt`` whose ``history_file`` entry is ``entry``: the rows
    of the first ``entry["bytes"]`` bytes of its ``history.jsonl``. A ``ValueError`` naming the file
    when it is missing or does not hold them."""
    path = ckpt / HISTORY_FILE
    rows, size = entry["rows"], entry["bytes"]
    try:
        with open(path, "rb") as f:
            data = f.read(size)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {ckpt} is incomplete: {HISTORY_FILE} is missing") from None
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    if len(data) != size or len(lines) != rows or (lines and not lines[-1].endswith("\n")):
        raise ValueError(
            f"{path} (truncated or damaged?): expected {rows} rows in its first {size} bytes, "
            f"got {len(lines)} rows in {len(data)} bytes"
        )
    try:
        return [restore_record(json.loads(line)) for line in lines]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} (truncated or damaged?): not a row of JSON: {e}") from None
