"""``summary.json`` of ``rnnkit diagnose`` as strict JSON, like the training kit's run files.

A diagnostic can be non-finite (a gradient profile's per-step factor with fewer than two nonzero
norms is NaN; a decay time at ``|a| = 1`` is ``inf``). Python's bare ``NaN``/``Infinity`` tokens
are refused by jq and JavaScript: each non-finite float is ``null`` in the file, and the top-level
``"nonfinite"`` maps its JSON Pointer (RFC 6901, e.g. ``"/snapshots/rnn/init/accuracy"``) to
``"nan"``, ``"inf"`` or ``"-inf"`` (as :func:`rnnkit.train.callbacks.strict_row` does for a flat
row); :func:`read_summary` gives the floats back.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["write_summary", "read_summary"]


def _strict(obj: Any, pointer: str, bad: dict[str, str]) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        bad[pointer] = repr(obj)
        return None
    if isinstance(obj, dict):
        return {k: _strict(v, f"{pointer}/{str(k).replace('~', '~0').replace('/', '~1')}", bad)
                for k, v in obj.items()}  # fmt: skip
    if isinstance(obj, (list, tuple)):
        return [_strict(v, f"{pointer}/{i}", bad) for i, v in enumerate(obj)]
    return obj


def write_summary(result: dict[str, Any], path: str | os.PathLike) -> None:
    """``result`` (nested dicts and lists) to ``path`` as strict JSON (see the module docstring);
    a value JSON has no type for is written as its ``str``."""
    bad: dict[str, str] = {}
    doc = _strict(result, "", bad)
    if bad:
        doc["nonfinite"] = bad
    Path(path).write_text(json.dumps(doc, indent=1, default=str, allow_nan=False), encoding="utf-8")


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """A ``summary.json``, its non-finite floats restored (files written before
    :func:`write_summary`, with bare ``NaN`` tokens, read alike)."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    for pointer, v in doc.pop("nonfinite", {}).items():
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
        node = doc
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = float(v)
    return doc
