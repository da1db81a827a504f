"""``summary.json`` of ``rnnkit diagnose`` as strict JSON, like the training kit's run files.

A diagnostic can be non-finite (a gradient profile's per-step factor with fewer than two nonzero
norms is NaN; a decay time at ``|a| = 1`` is ``inf``). Python's bare ``NaN``/``Infinity`` tokens
are refused by jq and JavaScript: each non-finite float is ``null`` in the file, and the top-level
``"nonfinite"`` maps its JSON Pointer (RFC 6901, e.g. ``"/snapshots/rnn/init/accuracy"``) to
``"nan"``, ``"inf"`` or ``"-inf"`` (:func:`rnnkit.train.callbacks.strict_record`, rooted);
:func:`read_summary` gives the floats back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rnnkit.train.callbacks import restore_record, strict_record
from rnnkit.train.serialize import fsync_dir, write_json_atomic, write_synced

__all__ = ["write_summary", "read_summary"]


def write_summary(result: dict[str, Any], path: str | os.PathLike) -> None:
    """``result`` (nested dicts and lists) to ``path`` as strict JSON (see the module docstring);
    a value JSON has no type for is written as its ``str``. Atomically, as the run files
    (:func:`rnnkit.train.serialize.write_json_atomic`): a crash leaves the old file or the new one."""
    doc = strict_record(result, rooted=True)
    write_json_atomic(doc, Path(path), indent=1, sort_keys=False, default=str, allow_nan=False)


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    """``text`` to ``path`` (UTF-8) atomically, as :func:`write_summary`: ``summary.txt``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_synced(tmp, text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """A ``summary.json``, its non-finite floats restored (files written before
    :func:`write_summary`, with bare ``NaN`` tokens, read alike)."""
    return restore_record(json.loads(Path(path).read_text(encoding="utf-8")), rooted=True)
