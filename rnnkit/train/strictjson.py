"""Strict JSON for metric rows and records: ``metrics.jsonl``'s lines, ``run.json``, a study's or a
diagnose run's summaries. Strict JSON has no ``NaN``/``Infinity`` (Python's ``json`` writes them, jq
and JavaScript refuse them): a non-finite float is ``null`` there, named in the row's
``"nonfinite"`` by its ``repr``; the readers put the floats back. (Re-exported by
:mod:`rnnkit.train.callbacks`, their first home.)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["strict_row", "restore_row", "strict_record", "restore_record", "metrics_line", "read_metrics"]


def _plain(v: Any) -> Any:
    """A numpy scalar or a one-value (0-d) array or tensor as the Python number it holds (a
    callback's metric, ``acc.mean()``: ``json`` refuses them, and ``metrics.jsonl`` and the
    checkpoint's history failed at the row, ending the run); a subclass of float or int (numpy's
    float64) as its plain value (the ``repr`` of its NaN, ``np.float64(nan)``, read back as no
    float); anything else as it is."""
    if v is None or type(v) in (bool, int, float) or isinstance(v, (str, dict, list, tuple)):
        return v
    if isinstance(v, float):
        return float(v)
    if isinstance(v, int):
        return int(v)
    if getattr(v, "ndim", None) == 0 and callable(getattr(v, "item", None)):
        return v.item()
    return v


def strict_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (a flat dict) as strict JSON takes it (bare ``NaN``/``Infinity`` tokens are Python's
    alone: jq and JavaScript refuse them): numpy scalars and 0-d tensors as Python numbers, each
    non-finite float ``None`` and named in ``"nonfinite"`` by its ``repr`` (``"nan"``, ``"inf"``,
    ``"-inf"``); :func:`restore_row` undoes the latter."""
    row = {k: _plain(v) for k, v in row.items()}
    bad = {k: repr(v) for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        row = {**{k: None if k in bad else v for k, v in row.items()}, "nonfinite": bad}
    return row


def restore_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row :func:`strict_row` was given (in place): its ``"nonfinite"`` floats put back."""
    for k, v in row.pop("nonfinite", {}).items():
        row[k] = float(v)
    return row


def _pointer(path: tuple, rooted: bool) -> str:
    """``path`` (keys and list indices) as a JSON Pointer (RFC 6901: ``~`` and ``/`` in a key
    escaped), with its leading ``/`` when ``rooted``; without, a top-level key is its own name, as
    in :func:`strict_row`."""
    return ("/" if rooted else "") + "/".join(str(k).replace("~", "~0").replace("/", "~1") for k in path)


def strict_record(rec: dict, rooted: bool = False) -> dict:
    """``rec`` as strict JSON takes it, like :func:`strict_row` but nested (a study's diverged
    run's ``curve``, a diagnose ``summary.json``): each non-finite float ``None``, named in
    ``"nonfinite"`` by its path (``"metric"``, ``"curve/3/2"``; ``rooted``: ``"/curve/3/2"``)
    with its ``repr``; numpy scalars and 0-d tensors as Python numbers."""
    bad: dict[str, str] = {}

    def walk(v: Any, path: tuple) -> Any:
        v = _plain(v)
        if isinstance(v, float) and not math.isfinite(v):
            bad[_pointer(path, rooted)] = repr(v)
            return None
        if isinstance(v, dict):
            return {k: walk(x, (*path, k)) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x, (*path, i)) for i, x in enumerate(v)]
        return v

    out = walk(rec, ())
    return {**out, "nonfinite": bad} if bad else out


def restore_record(rec: dict, rooted: bool = False) -> dict:
    """The record :func:`strict_record` was given (in place): its ``"nonfinite"`` floats put back."""
    for ptr, v in rec.pop("nonfinite", {}).items():
        keys = ptr.split("/")[1:] if rooted else ptr.split("/")
        *path, last = [k.replace("~1", "/").replace("~0", "~") for k in keys]
        node: Any = rec
        for k in path:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(last) if isinstance(node, list) else last] = float(v)
    return rec


def metrics_line(row: dict[str, Any]) -> str:
    """``row`` as one line of ``metrics.jsonl``: strict JSON (:func:`strict_row`)."""
    return json.dumps(strict_row(row), allow_nan=False) + "\n"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``, in order, their non-finite floats restored (files written
    before :func:`metrics_line`, with bare ``NaN`` tokens, read alike). A last line without its
    newline (a run still writing it, or killed mid-row) is left out."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n") or not line.strip():
            continue
        rows.append(restore_row(json.loads(line)))
    return rows
