"""The studies' task settings (``--set KEY=VALUE``): each key's expected form, checked before
anything is written, so a bad value is one usage error naming the key, the form and the
value instead of a traceback from deep inside a run (or a ``study.json`` that holds it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from rnnkit.tasks.memory import ARITH_MAX_DIGITS

__all__ = ["SettingError", "check_settings", "comparable", "FORMS", "PATH_KEYS"]


class SettingError(ValueError):
    """A bad task setting, architecture name or output directory (``--set``, ``--archs``,
    ``--out``): a usage error (``rnnkit study`` exits with status 2)."""


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:  # a finite one: --set clip=1e999 parses as inf
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pos(v: Any) -> bool:
    return _int(v) and v > 0


def _ints(v: Any) -> bool:  # positive ones
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_pos(x) for x in v)


def _range(v: Any) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) == 2 and all(_num(x) and x > 0 for x in v)
            and v[0] <= v[1])  # fmt: skip


def _tasks(v: Any) -> bool:
    try:
        from rnnkit.diagnostics.memory import TASKS
    except ImportError:  # pragma: no cover - before the diagnostics land
        TASKS = None
    return (isinstance(v, (list, tuple)) and len(v) > 0
            and all(isinstance(t, str) and (TASKS is None or t in TASKS) for t in v))  # fmt: skip


_POS = ("a positive integer", _pos)
_NONNEG = ("an integer >= 0", lambda v: _int(v) and v >= 0)
_NUM = ("a positive number", lambda v: _num(v) and v > 0)
_PATH = ("a path or None", lambda v: v is None or isinstance(v, str))

# key -> (expected form, check); a key of a study's settings missing here is not checked
FORMS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "lr": ("a [lo, hi] range of two positive numbers, lo <= hi, e.g. lr=[1e-3,1e-2]", _range),
    "hidden": (
        "a positive integer (one size), a non-empty list of them (searched), e.g. hidden=[64,128], or None",
        lambda v: v is None or _pos(v) or _ints(v),
    ),
    "digits": (  # Arith's operands are int64, as rnnkit train memory --task arith --digits
        f"a positive integer, at most {ARITH_MAX_DIGITS} (the operands are int64)",
        lambda v: _pos(v) and v <= ARITH_MAX_DIGITS,
    ),
    "ops": (
        "a non-empty string of '+' and '-', e.g. ops=+-",
        lambda v: isinstance(v, str) and len(v) > 0 and set(v) <= set("+-"),
    ),
    "delay": _NONNEG,
    "batch": _POS,
    "embed": _POS,
    "n_valid": _POS,
    "n_test": _POS,
    "n_evals": _POS,
    "min_steps": _POS,
    "max_steps": _POS,
    "clip": _NUM,
    "quantum": _NUM,
    "window": _POS,
    # a missing file failed only in the first run, after study.json was written with it: the
    # corrected command was then refused ("was run with settings ...") in the same --out
    "data": (
        "None or a path to an existing .npz of piano rolls (rnnkit.study.music.save_rolls)",
        lambda v: v is None or (isinstance(v, str) and os.path.isfile(v)),
    ),
    "data_dir": _PATH,
    "max_chorales": ("an integer >= 0 (0: all of them)", _NONNEG[1]),
    "params": (
        "an integer >= 0 or None (0 or None: no parameter matching)",
        lambda v: v is None or (_int(v) and v >= 0),
    ),
    "hidden_size": _POS,
    "steps": _POS,
    "threshold": ("a number in (0, 1]", lambda v: _num(v) and 0 < v <= 1),
    "lags": (
        "a non-empty list of increasing positive integers, e.g. lags=[5,10,20]",
        lambda v: _ints(v) and all(a < b for a, b in zip(v, v[1:])),
    ),
    "tasks": ("a non-empty list of memory tasks, e.g. tasks=['copy','plus_one']", _tasks),
}


def check_settings(study: str, defaults: dict, settings: dict) -> dict:
    """``defaults`` updated with ``settings`` (the ``--set`` overrides), every override checked
    against its key's form. Raises :class:`SettingError` for an unknown key or a bad value."""
    out = dict(defaults)
    for k, v in settings.items():
        if k not in defaults:
            raise SettingError(f"study {study!r} has no setting {k!r}; its settings are {sorted(defaults)}")
        form, ok = FORMS.get(k, ("", lambda v: True))
        if not ok(v):
            raise SettingError(f"--set {k}: expected {form}, got {v!r}")
        out[k] = v
    lo, hi = out.get("min_steps"), out.get("max_steps")
    if lo is not None and hi is not None and lo > hi and {"min_steps", "max_steps"} & settings.keys():
        raise SettingError(
            f"--set: min_steps={lo} exceeds max_steps={hi} (the budget's steps per run are clamped "
            "to [min_steps, max_steps]); lower min_steps or raise max_steps"
        )
    # parameter matching (chung) sets every architecture's width, after the hidden size was picked:
    # a --set hidden beside it was silently replaced (and a searched one still drawn into hparams)
    if out.get("params") and out.get("hidden") is not None and {"hidden", "params"} & settings.keys():
        raise SettingError(
            f"--set hidden={out['hidden']!r} has no effect while params={out['params']} matches every "
            "architecture's hidden size to that parameter count; add --set params=0 to choose the size"
        )
    return out


# the settings that name files or directories (relative ones: to the working directory)
PATH_KEYS = ("data", "data_dir")


def comparable(settings: dict) -> dict:
    """``settings`` with the paths of :data:`PATH_KEYS` resolved: what a resume compares, so that
    ``--set data=./x.npz`` resumes a study run with ``data=x.npz`` (one file, two spellings)."""
    resolve = lambda k, v: os.path.realpath(v) if k in PATH_KEYS and isinstance(v, str) else v  # noqa: E731
    return {k: resolve(k, v) for k, v in settings.items()}
