"""Helpers on recurrent states: a tensor, or tuples/lists/dicts of them, possibly nested."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def detach_state(state: Any) -> Any:
    """Detach every tensor in a (nested) state from the autograd graph.

    Truncated BPTT needs this between windows: a state still attached keeps the whole
    history's graph alive (memory grows every window) -- the bug Lightning had for
    tuple states (#8145). Tuples, lists and dicts are rebuilt (namedtuples keep their
    type); ``None`` and non-tensors pass through unchanged.
    """
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # namedtuple
        return type(state)(*(detach_state(s) for s in state))
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)
    if isinstance(state, dict):
        return {k: detach_state(v) for k, v in state.items()}
    return state
