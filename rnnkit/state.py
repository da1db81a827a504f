"""Helpers on recurrent states (a tensor, or a tuple/list of them, possibly nested)."""

from __future__ import annotations

from typing import TypeVar

from torch import Tensor

S = TypeVar("S")


def detach_state(state: S) -> S:
    """Detach a recurrent state from the graph (truncated BPTT), keeping its structure.

    Accepts ``None``, a tensor, or tuples/lists of those (e.g. LSTM's ``(h, c)``).
    """
    if state is None:
        return state
    if isinstance(state, Tensor):
        return state.detach()  # type: ignore[return-value]
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(s) for s in state)  # type: ignore[return-value]
    raise TypeError(f"detach_state expects a tensor or a tuple/list of tensors, got {type(state).__name__}")
