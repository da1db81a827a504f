"""Truncated BPTT(k1, k2) inside one long batch (Williams & Peng, 1990).

Notation of Sutskever (2013): an update every ``k1`` time steps, each backpropagating
through the last ``k2 >= k1`` steps. The model is a black box
``model(inputs, state) -> (output, new_state)`` whose output is time-aligned with its
inputs; nothing of the cell is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from rnnkit.train.distributed import get_world_size
from rnnkit.train.state import count_targets, detach_state, output_and_state

__all__ = ["tbptt_batch", "zero_loss"]


def zero_loss(output: Any) -> Tensor:
    """A zero scalar whose gradient reaches every parameter the (nested) ``output`` depends on,
    all of them zero and finite: a process's share of a DDP update when it has no target.

    DDP all-reduces a parameter's gradient when backward reaches it, so the graph must be that of
    a loss (the model's output), not a constant; ``0 * output`` keeps it with zero gradients.
    """
    parts = [t.sum() * 0.0 for t in _tensors(output) if t.requires_grad and t.is_floating_point()]
    if not parts:
        raise ValueError("zero_loss: the output holds no tensor that requires grad")
    return torch.stack([p.float() for p in parts]).sum()


def _tensors(obj: Any):
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)


def tbptt_batch(
    model: Callable[..., tuple[Tensor, Any]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    update: Callable[[Tensor], float],
    inputs: Tensor,
    targets: Tensor,
    state: Any,
    k1: int,
    k2: int | None = None,
    time_dim: int = 0,
    global_count: Callable[[int], float] | None = None,
    world_size: int | None = None,
    padded: bool = False,
) -> tuple[float, int, float, Any]:
    """Train on ``inputs``/``targets`` (time along ``time_dim``) with TBPTT(k1, k2).

    ``update(loss) -> grad_norm`` does backward + optimizer step. Detached states are
    kept at update boundaries. With ``k2 == k1`` (the fast path) every chunk of k1 steps
    runs once from the previous chunk's detached state. With ``k2 > k1`` the window
    ``[t - k2, t)`` is recomputed from the stored state at ``t - k2`` (reached without
    gradient from the nearest earlier boundary) and only the newest k1 outputs enter
    the loss, so each of them backpropagates at least ``k2 - k1`` steps. When ``T`` is not a
    multiple of ``k1`` the last update covers the ``T mod k1`` remaining steps and its window
    starts where a full one would, at ``prev + k1 - k2`` (``prev`` the previous update)
    rather than ``T - k2``: the same ``k2 - k1`` steps of history before its first output,
    and a start the stored boundaries reach.

    A window's targets are counted as :func:`~rnnkit.train.state.count_tokens` counts a batch's
    (``padded``: the batch had ``lengths``, and floating targets of -100 are padding). A window
    whose targets are all ignored (``-100``: labels only at the end of a sequence) only carries
    the state forward: no loss, no ``update``. ``global_count(n)``, when given,
    turns a window's number of targets here into the number over all processes (DDP: an
    all-reduce sum; every process calls it once per window, in the same order): a window is
    skipped only when that is 0, so all processes skip the same windows, and a process without
    a target in a window others have targets in calls ``update`` with a zero loss connected to
    the window's output (its share of DDP's gradient all-reduce: zero, never NaN). DDP averages
    the ``world_size`` processes' gradients (default: the process group's size), each of its
    process's *mean* loss over the window: with ``global_count`` that loss is passed to ``update``
    weighted by ``n * world_size / total`` (its ``n`` of the window's ``total`` targets), so the
    update is that of the token-weighted mean over all processes' targets, as one process with the
    whole batch makes it (the returned sums keep the unweighted loss).

    Returns ``(sum of loss * tokens, tokens, last grad norm, detached final state)``; the norm
    is 0.0 when no window had a target.
    """
    td, T = time_dim, inputs.shape[time_dim]
    k2 = k2 or k1
    world = world_size if world_size is not None else get_world_size()
    snaps = {0: state}
    loss_sum, tokens, norm, prev = 0.0, 0, 0.0, 0
    while prev < T:
        t = min(prev + k1, T)
        # where a full window would start, the last short one too (T - k2 could fall before
        # the boundaries kept below, and would backpropagate more than any other window)
        s = max(0, prev + k1 - k2)
        b = max(p for p in snaps if p <= s)
        st = snaps[b]
        if b < s:
            with torch.no_grad():
                _, st = output_and_state(model(inputs.narrow(td, b, s - b), st))
        out, new = output_and_state(model(inputs.narrow(td, s, t - s), st))
        tgt = targets.narrow(td, prev, t - prev)
        n = count_targets(tgt, padded)
        total = global_count(n) if global_count is not None else n
        if n:
            loss = loss_fn(out.narrow(td, prev - s, t - prev), tgt)
            w = n * world / total if global_count is not None else 1.0
            norm = update(loss if w == 1.0 else loss * w)
            loss_sum, tokens = loss_sum + float(loss.detach()) * n, tokens + n
        elif total:
            # Other processes have targets here, and their update is a DDP gradient all-reduce
            # this one must join, or the collectives stop matching (an abort or a hang). Not with
            # the loss: a mean over no target is NaN, and its NaN gradients would reach every rank.
            norm = update(zero_loss(out))
        # else no update anywhere: the loss is a mean over no target (NaN), and a step with zero
        # gradients would still move the weights (momentum, Adam, weight decay)
        snaps[t] = detach_state(new)
        # keep only the boundaries the next windows can start from
        keep_from = max(p for p in snaps if p <= max(0, t + k1 - k2))
        snaps = {p: v for p, v in snaps.items() if p >= keep_from}
        prev = t
    return loss_sum, tokens, norm, snaps[T]
