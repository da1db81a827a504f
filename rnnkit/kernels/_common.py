"""Shared helpers of the pure fused kernels: the step schedule of a packed direction, and
the recurrent input of a step.

Packed time-major data holds step ``t`` in rows ``offsets[t] : offsets[t] + batch_sizes[t]``,
and the active sequences of a step are always the *first* ``batch_sizes[t]`` rows of the
batch (sorted by decreasing length). So one running state buffer of ``B`` rows serves both
directions: a step updates rows ``[:bs]`` in place, rows past ``bs`` keep the final state of
sequences that ended (forward) or the initial state of sequences that have not started yet
(reverse). Backward walks the same schedule in the opposite order with running gradient
buffers, which end up holding the gradients of the initial state.
"""

from __future__ import annotations

import functools
from functools import lru_cache

import torch
from torch import Tensor

SECOND_ORDER = (
    "rnnkit's fused kernels of this configuration compute first-order gradients only (their "
    "backward is explicit BPTT, not a differentiable graph); for double backward (a gradient "
    "penalty, MAML, Hessian-vector products) build the layer with impl='loop'"
)
BATCHED = (
    "rnnkit's fused kernels of this configuration have no batching rule for a batched backward "
    "(torch.autograd.grad(..., is_grads_batched=True), torch.autograd.functional.jacobian or hessian "
    "with vectorize=True); build the layer with impl='loop'"
)


def batched(grads) -> bool:
    """Whether a backward runs under vmap: one of its incoming ``grads`` is a batched tensor, as
    in ``torch.autograd.grad(..., is_grads_batched=True)`` (which ``jacobian`` / ``hessian`` with
    ``vectorize=True`` call). Its dispatch key (legacy vmap's ``Batched``, functorch's
    ``FuncTorchBatched``) is not in Python's ``DispatchKey``, hence the name test."""
    return any(isinstance(g, Tensor) and "Batched" in str(torch._C._dispatch_keys(g)) for g in grads)


def per_cell(fn):
    """Memoize ``fn(cell)`` on the cell: its kernel kind depends only on options fixed when the
    cell is built, and dispatch asks for it several times per layer call (a few us of the small
    shape's ~400 us layer-norm forward)."""
    key = f"_memo_{fn.__module__}_{fn.__qualname__}".replace(".", "_")

    @functools.wraps(fn)
    def memo(cell):
        d = getattr(cell, "__dict__", None)
        if d is None or torch.compiler.is_compiling():  # not a cell (the callee says what it
            return fn(cell)  # expected); or traced, where a write to the cell is a side effect
        if key not in d:
            d[key] = fn(cell)
        return d[key]

    return memo


def first_order_only(backward):
    """For the fused kernels' autograd nodes, whose backward is explicit BPTT, not a
    differentiable graph: a backward run with ``create_graph=True`` (grad mode on) through a node
    with inputs that need a gradient raises ``RuntimeError(SECOND_ORDER)`` at once, naming the
    way out. (``torch.autograd.function.once_differentiable`` instead returns non-differentiable
    gradients and hangs a delayed error on them, which fires only when autograd walks through
    it: ``torch.autograd.grad(g, inputs=...)`` after a first loss like ``out.pow(2).sum()``, or
    any second derivative after ``out.sum()`` (a constant incoming gradient, no error node at
    all), got second-order results with these kernels' terms silently missing.)"""

    @functools.wraps(backward)
    def wrapper(ctx, *args):
        if torch.is_grad_enabled() and any(ctx.needs_input_grad):
            raise RuntimeError(SECOND_ORDER)
        if batched(args):  # else the C++ ops' 'Batching rule not implemented for rnnkit_ext::backward'
            raise RuntimeError(BATCHED)
        with torch.no_grad():
            return backward(ctx, *args)

    return wrapper


@lru_cache(maxsize=256)
def schedule(batch_sizes: tuple[int, ...], reverse: bool) -> tuple[tuple[int, int], ...]:
    """``(offset, batch)`` of every step in processing order (forward pass order)."""
    offs, acc = [], 0
    for bs in batch_sizes:
        offs.append((acc, bs))
        acc += bs
    return tuple(reversed(offs)) if reverse else tuple(offs)


def load_prev(hbuf: Tensor, mask: Tensor | None, bs: int, dst: Tensor) -> Tensor:
    """``dst = h_{t-1}`` of the step's ``bs`` active rows as the recurrent GEMM reads it:
    ``hbuf[:bs]``, times the recurrent-dropout mask when there is one."""
    return dst.copy_(hbuf[:bs]) if mask is None else torch.mul(hbuf[:bs], mask[:bs], out=dst)


class _InferenceCtx:
    """The ``ctx`` of an ``autograd.Function`` forward run outside ``apply`` (:func:`run_fn`):
    what the forward records on it is kept by no one."""

    def save_for_backward(self, *tensors: Tensor) -> None:
        pass

    def mark_non_differentiable(self, *tensors: Tensor) -> None:
        pass

    def set_materialize_grads(self, value: bool) -> None:
        pass


def run_fn(fn: type[torch.autograd.Function], save: bool, *args):
    """``fn.apply(*args)``; when nothing is saved for backward (``save``: :func:`wants_grad` of
    the call's tensors), ``fn``'s forward run directly, as no autograd node is built then:
    ``apply``'s machinery costs ~9 us a call, a third of the small layer-norm LSTM's fixed cost
    over torch.nn's LSTM. (torch.func transforms and forward-mode AD never get here: the layers
    run the reference loop under them, rnnkit.dispatch.)"""
    return fn.apply(*args) if save else fn.forward(_InferenceCtx(), *args)


def wants_grad(tensors) -> bool:
    """Whether a kernel call must save for backward: grad mode on and some input needing a
    gradient (``ctx.needs_input_grad`` inside an ``autograd.Function`` ignores ``no_grad``, so
    the eager wrappers decide this before calling ``apply``)."""
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)
