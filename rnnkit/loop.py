"""The reference time loop: runs any cell over one direction of a (packed) batch.

The loop works on the *packed* time-major layout that ``torch.nn.utils.rnn`` uses: step
``t`` holds the first ``batch_sizes[t]`` sequences (sorted by decreasing length), so a padded
batch is the special case ``batch_sizes == [B] * T`` and variable lengths cost no padding.
Every faster path is tested against this loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .cells.base import Cell, Params, State, StepContext


def run_direction(
    cell: Cell,
    p: Params,
    xp: Tensor,
    batch_sizes: Sequence[int],
    h0: State,
    reverse: bool = False,
    ctx: StepContext | None = None,
) -> tuple[Tensor, State]:
    """Run ``cell`` over one direction of a (packed) sequence batch.

    Args:
        xp: projected inputs ``(sum(batch_sizes), G)``, time-major.
        batch_sizes: active sequences per step, non-increasing.
        h0: initial state, each ``(batch_sizes[0], S_i)``.
    Returns:
        outputs ``(sum(batch_sizes), S_0)`` in the same layout, and the final state of every
        sequence (its last valid step; step 0 when ``reverse``).
    """
    T, B = len(batch_sizes), batch_sizes[0]
    ctx = ctx or StepContext()
    if batch_sizes[-1] == B:
        steps: Sequence[Tensor] = xp.view(T, B, -1).unbind(0)
    else:
        steps = xp.split(list(batch_sizes))
    outs: list[Tensor] = [xp] * T
    if not reverse:
        state, finished = h0, []
        for t in range(T):
            bs = batch_sizes[t]
            if bs < state[0].shape[0]:  # shorter sequences ended: freeze their final state
                finished.append(tuple(s[bs:] for s in state))
                state = tuple(s[:bs] for s in state)
            ctx.t = t
            state = cell.step(p, steps[t], state, ctx)
            outs[t] = state[0]
        if finished:
            state = tuple(torch.cat([s, *(f[i] for f in reversed(finished))]) for i, s in enumerate(state))
    else:
        state = tuple(s[: batch_sizes[-1]] for s in h0)
        for t in range(T - 1, -1, -1):
            bs, cur = batch_sizes[t], state[0].shape[0]
            if bs > cur:  # longer sequences start here, from their initial state
                state = tuple(torch.cat([s, s0[cur:bs]]) for s, s0 in zip(state, h0))
            ctx.t = t
            state = cell.step(p, steps[t], state, ctx)
            outs[t] = state[0]
    return torch.cat(outs), state
