"""The normalized LSTM with its input group computed in the fused kernel (eager, compiled kernels).

The layer-norm LSTM, and the batch-norm LSTM in training, pass the layer input ``x`` to
``rnnkit_norm::forward`` instead of a precomputed input group: the kernel computes
``norm(x W_ihᵀ) + b`` a chunk of steps ahead of the steps that read it (csrc/norm.cpp), and this
module's autograd node differentiates it from what the kernel saved. The rest of the
direction's glue (the backward op, the saved-tensor layout) is :mod:`.norm_ops`'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..cells.base import Cell, Params, State
from ..cells.norm import MOMENTUM
from . import _common, _gemm
from .norm import BN_TRAIN, LN
from .norm_input import update_running_groups
from .norm_ops import COL_HPREV, _backward, _setup_context, backward_impl, ih_shift, kind_of


def run_direction_input(
    cell: Cell,
    p: Params,
    x: Tensor,
    batch_sizes: Sequence[int],
    h0: State,
    reverse: bool = False,
    mask: Tensor | None = None,
    zoneout_rows: tuple[Tensor | None, Tensor | None] = (None, None),
) -> tuple[Tensor, State]:
    """:func:`.norm_ops.project_input` and :func:`.norm_ops.run_direction` of a layer-norm
    LSTM, or of a batch-norm LSTM in training, in one kernel call on the layer input ``x (N, I)``:
    the kernel computes ``norm(x W_ihᵀ) + b`` for each step's rows right before the step reads
    them (no ``(N, 4H)`` input group written and read back: at the medium shape 13 MB each way;
    batch norm also skips a separate pass for its per-step statistics). Batch norm then updates every group's
    running statistics as :func:`.norm_ops.run_direction` does. Same numbers up to rounding.
    ``batch_sizes``: Python ints (:func:`rnnkit.kernels.run_layer_direction` made them so)."""
    bsz = tuple(batch_sizes)
    mode, g = (BN_TRAIN, "bn") if kind_of(cell) == "lstm_bn" else (LN, "ln")
    zh, zc = zoneout_rows
    if mode == LN:
        s_ih = ih_shift(cell, p)
    else:  # batch norm's input group has no shift of its own: the biases
        s_ih = p["bias_ih"] + p["bias_hh"] if cell.bias else None
    gains = (p[f"weight_{g}_hh"], p.get(f"bias_{g}_hh"), p[f"weight_{g}_c"], p.get(f"bias_{g}_c"))
    args = (x, p["weight_ih"], p[f"weight_{g}_ih"], s_ih, h0[0], h0[1], p["weight_hh"], p.get("weight_hr"),
            mask, zh, zc, *gains, p.get("weight_peephole"))  # fmt: skip
    save = _common.wants_grad(args)
    running = _running(p, x) if mode == BN_TRAIN else None
    out, hn, cn, *stats = _common.run_fn(_InputNormDirection, save, mode, bsz, reverse, save, running, *args)
    if mode == BN_TRAIN and running is None:
        groups = [("hh", *stats[0:2]), ("c", *stats[2:4]), ("ih", *stats[4:6])]
        update_running_groups(p, groups, bsz, reverse)
    return out, (hn, cn)


def _running(p: Params, x: Tensor) -> list[Tensor] | None:
    """The batch-norm groups' running statistics ``[μ_hh, σ²_hh, μ_c, σ²_c, μ_ih, σ²_ih]`` for the
    kernel to update itself after its loop (the update of :func:`update_running_groups`, without
    its op call and glue: ~15 us of a small layer's forward); ``None`` where one is not the
    kernel's contiguous CPU data of ``x``'s dtype: then :func:`update_running_groups` updates
    them, or names the bad one."""
    dtype = x.dtype
    running = [p[f"running_{s}_{g}"] for g in ("hh", "c", "ih") for s in ("mean", "var")]
    for t in running:
        if t.dtype is not dtype or not t.is_cpu or not t.is_contiguous():
            return None
    return running


class _InputNormDirection(torch.autograd.Function):
    """Autograd node of :func:`run_direction_input`: the kernel's explicit BPTT (as
    :class:`.norm_ops._NormDirection`) gives ``d xp``; the input group's norm is differentiated
    from the ``x̂`` and ``1/σ`` the kernel saved (``rnnkit_norm::ln_input_backward``, a row's
    ``1/σ``; ``bn_input_backward``, a step's), then ``dx = da W_ih``, ``dW_ih = daᵀ x``. Outputs
    ``out, h_n, c_n`` and, for batch norm, the per-step statistics ``μ, σ²`` of the hh, c and ih
    groups (processing order, for the running statistics)."""

    @staticmethod
    def forward(ctx, mode, bsz, reverse, save, running, x, w_ih, g_ih, s_ih, h0, c0, w_hh, w_hr, mask, zh, zc,
                g_hh, s_hh, g_c, s_c, w_peep):  # fmt: skip
        x, h0, c0 = x.contiguous(), h0.contiguous(), c0.contiguous()
        res = list(torch.ops.rnnkit_norm.forward(
            "lstm", mode + COL_HPREV, x.new_empty(0), h0, c0, w_hh, None, w_hr, mask, zh, zc, g_hh, s_hh, g_c,
            s_c, None, None, w_peep, x, w_ih, g_ih, s_ih, list(bsz), reverse, _gemm.use_onednn(x), save,
            running, MOMENTUM,
        ))  # fmt: skip
        # after the recurrent groups' tensors, the input group's: x̂ and 1/σ (a row's, a step's
        # column's) with `save`, then batch norm's per-step μ and σ²
        n_ih = (2 if save else 0) + (0 if mode == LN else 2)
        res, ih = res[: len(res) - n_ih], res[len(res) - n_ih :]
        stats = () if mode == LN else (*res[3:7], *ih[-2:])
        if save:  # (inference: the kernel returned no saved tensors, and ctx is kept by no one)
            ih = ih[:2]  # x̂, 1/σ; bn_input_backward reads the statistics in time order
            if mode != LN and reverse:
                ih[1] = ih[1].flip(0)
            inputs = ("lstm", mode, None, h0, c0, w_hh, None, w_hr, mask, zh, zc, g_hh, s_hh, g_c, s_c, None,
                      None, w_peep, bsz, reverse)  # fmt: skip
            _setup_context(ctx, inputs, res, extra=(x, w_ih, g_ih, s_ih, *ih))
            ctx.mark_non_differentiable(*stats)
        return res[0], res[1], res[2], *stats

    @staticmethod
    @_common.first_order_only
    def backward(ctx, dout, dhn, dcn, *_stats):
        all_saved = ctx.saved_tensors  # read once: non-reentrant checkpoint unpacks each tensor once
        g = _backward(ctx, (dout, dhn, dcn), backward_impl, all_saved)  # in fused_norm_direction's order
        x, w_ih, g_ih, s_ih, *ih = all_saved[-ctx.n_extra :]
        need = ctx.needs_input_grad
        want = [need[5] or need[6], need[7], need[8] and s_ih is not None]
        xh, rs = ih
        if ctx.mode == LN:
            da, dg, ds = torch.ops.rnnkit_norm.ln_input_backward(g[2], xh, rs, g_ih, s_ih is not None)
        else:
            bn_backward = torch.ops.rnnkit_norm.bn_input_backward
            da, dg, ds = bn_backward(g[2], xh, rs, g_ih, s_ih is not None, list(ctx.batch_sizes))
        da, dg, ds = (t if w else None for t, w in zip((da, dg, ds), want))
        dx = dw = None  # da is None when neither x nor W_ih needs a gradient (frozen W_ih, data x)
        if da is not None:
            dx, dw, _ = _gemm.linear_grads(da, x, w_ih, False, (need[5], need[6], False))
        # inputs: mode, bsz, reverse, save, running, x, w_ih, g_ih, s_ih, h0, c0, w_hh, w_hr, mask, zh, zc,
        # g_hh, s_hh, g_c, s_c, w_peep
        return (None, None, None, None, None, dx, dw, dg, ds, g[3], g[4], g[5], g[7], None, None, None, g[11],
                g[12], g[13], g[14], g[17])  # fmt: skip
