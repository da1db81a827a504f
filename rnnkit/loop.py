"""The reference time loop: runs any cell over one direction of a (packed) batch.

The loop works on the *packed* time-major layout that ``torch.nn.utils.rnn`` uses: step
``t`` holds the first ``batch_sizes[t]`` sequences (sorted by decreasing length), so a padded
batch is the special case ``batch_sizes == [B] * T`` and variable lengths cost no padding.
Every faster path is tested against this loop.

Zoneout (Krueger et al. 2017) lives here because it acts on the state between steps, for
any cell: with per-component probability ``p_i`` and keep-mask ``d_t`` (1 = keep),
``s_t = d_t ⊙ s_{t-1} + (1 - d_t) ⊙ s̃_t`` in training and ``s_t = p_i s_{t-1} + (1 - p_i) s̃_t``
(the expectation) in evaluation, where ``s̃_t`` is the cell's new state.
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
    zoneout: Sequence[float] | None = None,
    zoneout_masks: Sequence[Tensor | None] | None = None,
) -> tuple[Tensor, State]:
    """Run ``cell`` over one direction of a (packed) sequence batch.

    Args:
        xp: projected inputs ``(sum(batch_sizes), G)``, time-major.
        batch_sizes: active sequences per step, non-increasing.
        h0: initial state, each ``(batch_sizes[0], S_i)``.
        zoneout: per-state-component probabilities, or None.
        zoneout_masks: in training, per component a keep-mask ``(T, batch_sizes[0], S_i)``
            (rows in packed order) or None where ``p_i == 0``; None in evaluation.
    Returns:
        outputs ``(sum(batch_sizes), S_0)`` in the same layout, and the final state of every
        sequence (its last valid step; step 0 when ``reverse``).
    """
    T, B = len(batch_sizes), batch_sizes[0]
    ctx = ctx or StepContext()
    if batch_sizes[-1] == B:
        # the width named, not -1: under torch.jit.trace T is the traced length, and a shorter
        # input (T * G == traced T) viewed as (T, B, -1) gave 1-wide steps that broadcast against
        # the recurrent term, silently; named, another length is the interpreter's error
        steps: Sequence[Tensor] = xp.view(T, B, xp.shape[-1]).unbind(0)
    else:
        steps = xp.split(list(batch_sizes))
    outs: list[Tensor] = [xp] * T
    zo = zoneout if zoneout is not None and any(zoneout) else None
    if not reverse:
        state, finished = h0, []
        for t in range(T):
            bs = batch_sizes[t]
            if bs < state[0].shape[0]:  # shorter sequences ended: freeze their final state
                finished.append(tuple(s[bs:] for s in state))
                state = tuple(s[:bs] for s in state)
            ctx.t = t
            new = cell.step(p, steps[t], state, ctx)
            state = new if zo is None else _zoneout(state, new, t, zo, zoneout_masks)
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
            new = cell.step(p, steps[t], state, ctx)
            state = new if zo is None else _zoneout(state, new, t, zo, zoneout_masks)
            outs[t] = state[0]
    return torch.cat(outs), state


def _zoneout(prev: State, new: State, t: int, probs: Sequence[float], masks) -> State:
    """Mix the previous and the new state component-wise (see the module docstring)."""
    out = []
    for i, (s0, s1) in enumerate(zip(prev, new)):
        if not probs[i]:
            out.append(s1)
        elif masks is None:  # evaluation: the expectation
            out.append(torch.lerp(s1, s0, probs[i]))
        else:  # lerp is exact at weights 0 and 1: kept units are exactly s_{t-1}
            out.append(torch.lerp(s1, s0, masks[i][t, : s1.shape[0]]))
    return tuple(out)
