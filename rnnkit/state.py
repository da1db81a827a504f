"""Helpers on recurrent states: a tensor, or tuples/lists/dicts of them, possibly nested."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import Tensor


def map_tensors(fn: Callable[[Tensor], Any], state: Any) -> Any:
    """``fn`` applied to every tensor in a (nested) state: tuples, lists and dicts are rebuilt
    (namedtuples and dict subclasses keep their type: a ``PackedSequence``'s integer fields pass
    through ``fn`` too, a ``defaultdict`` keeps its factory); ``None`` and non-tensors pass
    through unchanged."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # namedtuple
        return type(state)(*(map_tensors(fn, s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(map_tensors(fn, s) for s in state)
    if isinstance(state, dict):
        return rebuild_dict(state, {k: map_tensors(fn, v) for k, v in state.items()})
    return state


def rebuild_dict(like: dict, items: dict) -> dict:
    """``items`` in a dict of ``like``'s type: a plain dict is ``items``; a subclass
    (``OrderedDict``, ``defaultdict`` with its ``default_factory``, a model's own state class)
    is a shallow copy of ``like`` given the new values, as torch's pytree utilities rebuild
    the ones they know -- a plain dict would lose the defaults, methods and attributes that the
    model's next call may use."""
    if type(like) is dict:
        return items
    out = copy.copy(like)  # the type and its attributes; the values are all replaced below
    for k, v in items.items():
        out[k] = v
    return out


def detach_state(state: Any) -> Any:
    """Detach every tensor in a (nested) state from the autograd graph.

    Truncated BPTT needs this between windows: a state still attached keeps the whole
    history's graph alive (memory grows every window) -- the bug Lightning had for
    tuple states (#8145). Tuples, lists and dicts are rebuilt (namedtuples and dict subclasses
    keep their type); ``None`` and non-tensors pass through unchanged.
    """
    return map_tensors(Tensor.detach, state)
