"""Fused path of the normalized cells: dispatch glue and the custom op ``rnnkit::fused_norm_direction``.

Covers ``norm="layer"`` for the LSTM (incl. ``proj_size``, ``bias=False``, ``peephole``), the
GRU (torch form) and the RNN (tanh/relu), and ``norm="batch"`` for the LSTM (also with
peepholes), with recurrent dropout and zoneout. Per layer-direction:

* the **input group** is normalized for all steps at once, with autograd: layer norm in
  :func:`project_input` (``LN(x W_ihᵀ) + b``, as ``cell.project_input``); batch norm in
  :func:`run_direction`, which needs the steps: per-step batch statistics (training) or the
  running statistics of each row's slot (evaluation), then ``+ b_ih + b_hh``;
* the time loop — recurrent GEMM, normalization of ``r_t`` and (LSTM) of ``c_t``, gates —
  is one call of the custom op (forward and explicit BPTT: :mod:`.norm` in pure PyTorch, or
  ``csrc/norm.cpp`` compiled; the same numbers up to rounding);
* in batch-norm training the running statistics of every group are then updated exactly as
  :func:`rnnkit.cells.norm.batch_norm` does step by step (momentum 0.1, unbiased variance,
  slot ``min(k, max_len - 1)`` for the ``k``-th processed step, variance untouched when a
  step has one row), from the per-step statistics the op returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cells.base import Cell, Params, State
from ..cells.gru import GRUCellMath
from ..cells.lstm import _DEFAULTS as _LSTM_DEFAULTS
from ..cells.lstm import LSTMCellMath
from ..cells.norm import EPS, layer_norm
from ..cells.rnn import RNNCellMath
from . import _common, _gemm
from . import norm as pure
from .norm import BN_EVAL, BN_TRAIN, LN
from .norm_input import batch_norm_input, eval_stats, update_running_groups, use_ext_for
from .ops import refuse_b_hh

COL_HPREV = 32  # mode flag of rnnkit_norm::forward: save h_{t-1} column-major (csrc/norm.cpp)

NORM_KINDS = ("lstm_ln", "lstm_bn", "gru_ln", "rnn_tanh_ln", "rnn_relu_ln")


@_common.per_cell
def kind_of(cell: Cell) -> str | None:
    """``"lstm_ln"``, ``"lstm_bn"``, ``"gru_ln"``, ``"rnn_tanh_ln"``, ``"rnn_relu_ln"`` or None."""
    norm = getattr(cell, "norm", None)
    if norm is None:
        return None
    if type(cell) is LSTMCellMath:
        opts = cell._options
        free = ("norm", "forget_bias", "max_len", "peephole")
        if all(opts[k] == d for k, d in _LSTM_DEFAULTS.items() if k not in free):
            return "lstm_ln" if norm == "layer" else "lstm_bn"
        return None
    if type(cell) is GRUCellMath and cell.variant is None and cell.reset_after and norm == "layer":
        return "gru_ln"
    if type(cell) is RNNCellMath and norm == "layer":
        return f"rnn_{cell.nonlinearity}_ln"
    return None


def project_input(cell: Cell, p: Params, x: Tensor) -> Tensor:
    """``LN(x W_ihᵀ) + biases`` (layer norm) or ``x W_ihᵀ`` (batch norm: see run_direction)."""
    a = _gemm.linear(x, p["weight_ih"], None)
    if kind_of(cell) == "lstm_bn":
        return a
    if not cell.bias:
        return layer_norm(p, "ih", a)
    return F.layer_norm(a, a.shape[-1:], p["weight_ln_ih"], ih_shift(cell, p), EPS)


def ih_shift(cell: Cell, p: Params) -> Tensor | None:
    """The input group's layer-norm shift with the constant biases folded in, ``β + b`` (``b``:
    ``b_ih``, plus ``b_hh`` but for the GRU): ``γ x̂ + (β + b)`` is one pass over ``(N, G)`` less."""
    b = None
    if cell.bias:
        b = p["bias_ih"] if isinstance(cell, GRUCellMath) else p["bias_ih"] + p["bias_hh"]
    s = p.get("bias_ln_ih")
    return b if s is None else s if b is None else s + b


def run_direction(
    cell: Cell,
    p: Params,
    xp: Tensor,
    batch_sizes: Sequence[int],
    h0: State,
    reverse: bool = False,
    mask: Tensor | None = None,
    zoneout_rows: tuple[Tensor | None, Tensor | None] = (None, None),
    training: bool = False,
) -> tuple[Tensor, State]:
    """One direction of a normalized cell over packed time-major ``xp`` (see the module doc);
    ``zoneout_rows``: the per-row zoneout weights ``(zh, zc)`` of :mod:`rnnkit.kernels`."""
    kind = kind_of(cell)
    if kind is None:
        raise ValueError(f"no fused normalized kernel for {type(cell).__name__}({cell.describe()})")
    bsz = list(map(int, batch_sizes))
    base = kind[: -len("_ln")]
    lstm = base == "lstm"
    st_hh = st_c = None
    if kind == "lstm_bn":
        mode = BN_TRAIN if training else BN_EVAL
        xp = batch_norm_input(cell, p, xp, bsz, reverse, training)
        if not training:
            st_hh, st_c = (eval_stats(p, grp, len(bsz)) for grp in ("hh", "c"))
        g = "bn"
    else:
        mode, g = LN, "ln"
    c0 = h0[1] if lstm else None
    b_hh = p.get("bias_hh") if base == "gru" else None
    w_hr = p.get("weight_hr") if lstm else None
    zh, zc = zoneout_rows
    gains = (p[f"weight_{g}_hh"], p.get(f"bias_{g}_hh"), p.get(f"weight_{g}_c"), p.get(f"bias_{g}_c"))
    w_peep = p.get("weight_peephole") if lstm else None
    args = (xp, h0[0], c0, p["weight_hh"], b_hh, w_hr, mask, zh, zc, *gains, st_hh, st_c, w_peep)
    if torch.compiler.is_compiling():  # one opaque custom op per direction in the graph
        res = fused_norm_direction(base, mode, *args, bsz, reverse)
    else:  # eager: the same computation without the custom-op machinery (~0.1 ms a call)
        save = _common.wants_grad(args)
        res = _common.run_fn(_NormDirection, save, base, mode, bsz, reverse, save, *args)
    out, hn, cn = res[:3]
    if mode == BN_TRAIN:
        update_running_groups(p, [("hh", *res[3:5]), ("c", *res[5:7])], bsz, reverse)
    return out, ((hn, cn) if lstm else (hn,))


# -- the custom op ----------------------------------------------------------------------------
class _NormDirection(torch.autograd.Function):
    """Eager twin of ``rnnkit::fused_norm_direction`` and its autograd formula (the custom op's
    Python dispatch costs ~0.1 ms a call: at the small shape a fifth of the layer's time)."""

    @staticmethod
    def forward(ctx, kind, mode, bsz, reverse, save, *args):
        xp = args[0]  # without `save` (no gradient wanted) the kernels keep nothing for backward
        res = forward_impl(kind, mode, use_ext_for(xp), _gemm.use_onednn(xp), *args, list(bsz), reverse,
                           save=save, col_hprev=True)  # fmt: skip
        _setup_context(ctx, (kind, mode, *args, bsz, reverse), res)
        ctx.mark_non_differentiable(*res[3:7], *res[7:])
        if kind != "lstm":
            ctx.mark_non_differentiable(res[2])
        return tuple(res)

    @staticmethod
    @_common.first_order_only
    def backward(ctx, *grads):
        return (None, None, None, None, None, *_backward(ctx, grads, backward_impl)[2:-2])


def forward_impl(base, mode, use_ext, onednn, *args, save: bool = True, col_hprev: bool = False):
    """``[out, h_n, c_n, μ_hh, σ²_hh, μ_c, σ²_c, *saved]``; without ``save`` (no gradient
    wanted) the compiled kernels keep step-sized scratch only, and return no saved tensors. With
    ``col_hprev`` (eager only: the custom op's outputs are row-major, as its fake says) the
    compiled LSTM/RNN kernels save ``h_{t-1}`` column-major (csrc/norm.cpp)."""
    *tensors, bsz, reverse = args
    tensors[0], tensors[1] = tensors[0].contiguous(), tensors[1].contiguous()
    if tensors[2] is not None:  # c0: the kernels clone it as the running cell buffer, read row-major
        tensors[2] = tensors[2].contiguous()
    if use_ext:
        code = mode + (COL_HPREV if col_hprev else 0)
        no_input = (None, None, None, None)  # x_in, w_ih, g_ih, s_ih: xp given (run_direction_input)
        fwd = torch.ops.rnnkit_norm.forward
        return list(fwd(base, code, *tensors, *no_input, bsz, reverse, onednn, save))
    if base != "gru":  # (tensors[4]: b_hh)
        refuse_b_hh("rnnkit::fused_norm_direction", base, tensors[4], "the caller adds it to xp")
    out, hn, cn, stats, saved = pure.forward(base, mode, *tensors, tuple(bsz), reverse)
    return [out, hn, cn, *stats, *saved]


@torch.library.custom_op("rnnkit::fused_norm_direction", mutates_args=())
def fused_norm_direction(
    kind: str,
    mode: int,
    xp: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    mask: Tensor | None,
    zh: Tensor | None,
    zc: Tensor | None,
    g_hh: Tensor,
    s_hh: Tensor | None,
    g_c: Tensor | None,
    s_c: Tensor | None,
    st_hh: Tensor | None,
    st_c: Tensor | None,
    w_peep: Tensor | None,
    batch_sizes: list[int],
    reverse: bool,
) -> list[Tensor]:
    """``[out, h_n, c_n, μ_hh, σ²_hh, μ_c, σ²_c, *saved]`` of one normalized direction.

    ``kind`` ``"lstm" | "gru" | "rnn_tanh" | "rnn_relu"``, ``mode`` 1 (layer norm), 2 (batch
    norm, training), 3 (batch norm, evaluation with per-slot statistics ``st (2, S, F)``);
    ``g_*, s_*`` the gains and shifts of the recurrent group and of the cell (LSTM); ``w_peep``
    the LSTM's peepholes ``(3H,)`` (i, f, o), added after the normalization.
    """
    args = (xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, g_hh, s_hh, g_c, s_c, st_hh, st_c, w_peep)
    return forward_impl(kind, mode, use_ext_for(xp), _gemm.use_onednn(xp), *args, batch_sizes, reverse)


@fused_norm_direction.register_fake
def _(kind, mode, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, g_hh, s_hh, g_c, s_c, st_hh, st_c, w_peep,
      batch_sizes, reverse):  # fmt: skip
    N, B, P, T, G = xp.shape[0], h0.shape[0], h0.shape[1], len(batch_sizes), w_hh.shape[0]
    e = xp.new_empty

    def group(F):  # x̂, ρ
        return [e(N, F), e(N, 1) if mode == LN else e(T, F) if mode == BN_TRAIN else e(0)]

    def stats(F):
        return [e(T, F), e(T, F)] if mode == BN_TRAIN else [e(0), e(0)]

    if kind == "lstm":
        H = c0.shape[1]
        saved = [e(N, 4 * H), e(N, H), e(N, H), e(N, P), e(N, H) if w_hr is not None else e(0)]
        return [e(N, P), e(B, P), e(B, H), *stats(G), *stats(H), *saved, *group(G), *group(H)]
    head = [e(N, P), e(B, P), e(0), *stats(G), e(0), e(0)]
    if kind == "gru":
        return [*head, e(N, 3 * P), e(N, P), e(N, P), e(N, P) if mask is not None else e(0), *group(G)]
    return [*head, e(N, P) if zh is not None else e(0), e(N, P), *group(G)]


@torch.library.custom_op("rnnkit::fused_norm_direction_backward", mutates_args=())
def fused_norm_direction_backward(
    kind: str,
    mode: int,
    gout: Tensor,
    ghn: Tensor,
    gcn: Tensor,
    out: Tensor,
    saved: list[Tensor],
    w_hh: Tensor,
    has_bias: bool,
    w_hr: Tensor | None,
    mask: Tensor | None,
    zh: Tensor | None,
    zc: Tensor | None,
    g_hh: Tensor,
    shift_hh: bool,
    g_c: Tensor | None,
    shift_c: bool,
    st_hh: Tensor | None,
    st_c: Tensor | None,
    w_peep: Tensor | None,
    batch_sizes: list[int],
    reverse: bool,
) -> list[Tensor]:
    """``[d xp, d h0, d c0, d W_hh, d b_hh, d W_hr, dγ_hh, dβ_hh, dγ_c, dβ_c, d w_peep]`` (empty
    where absent)."""
    return backward_impl(
        kind, mode, gout, ghn, gcn, out, saved, w_hh, has_bias, w_hr, mask, zh, zc, g_hh, shift_hh, g_c,
        shift_c, st_hh, st_c, w_peep, batch_sizes, reverse,
    )  # fmt: skip


def backward_impl(kind, mode, gout, ghn, gcn, out, saved, w_hh, has_bias, w_hr, mask, zh, zc, g_hh, shift_hh,
                  g_c, shift_c, st_hh, st_c, w_peep, batch_sizes, reverse):  # fmt: skip
    """The backward op's computation (compiled or pure kernels); the peepholes' gradient after
    the loop, from the gate gradients and the saved gates and ``c_{t-1}``."""
    gout, ghn, gcn = gout.contiguous(), ghn.contiguous(), gcn.contiguous()
    args = (gout, ghn, gcn, out, saved, w_hh, has_bias, w_hr, mask, zh, zc, g_hh, shift_hh, g_c, shift_c)
    if use_ext_for(gout):
        onednn = _gemm.use_onednn(gout)
        ext_bwd = torch.ops.rnnkit_norm.backward
        res = list(ext_bwd(kind, mode, *args, st_hh, st_c, w_peep, batch_sizes, reverse, onednn))
    else:
        res = pure.backward(kind, mode, *args, st_hh, st_c, w_peep, tuple(batch_sizes), reverse)
        res = [gout.new_empty(0) if g is None else g for g in res]
    dp = pure.peephole_grad(res[0], saved[0], saved[1]) if w_peep is not None else gout.new_empty(0)
    return [*res, dp]


@fused_norm_direction_backward.register_fake
def _(kind, mode, gout, ghn, gcn, out, saved, w_hh, has_bias, w_hr, mask, zh, zc, g_hh, shift_hh, g_c,
      shift_c, st_hh, st_c, w_peep, batch_sizes, reverse):  # fmt: skip
    e = gout.new_empty
    G = w_hh.shape[0]
    lstm = kind == "lstm"
    return [
        e(gout.shape[0], 4 * gcn.shape[1] if lstm else 3 * ghn.shape[1] if kind == "gru" else ghn.shape[1]),
        e(ghn.shape),
        e(gcn.shape) if lstm else e(0),
        e(w_hh.shape),
        e(G) if has_bias and kind == "gru" else e(0),
        e(w_hr.shape) if w_hr is not None else e(0),
        e(G),
        e(G) if shift_hh else e(0),
        e(g_c.shape) if lstm else e(0),
        e(g_c.shape) if lstm and shift_c else e(0),
        e(w_peep.shape) if w_peep is not None else e(0),
    ]


def _setup_context(ctx, inputs, output, extra=()):
    kind, mode, _, _, _, w_hh, b_hh, w_hr, mask, zh, zc, g_hh, s_hh, g_c, s_c, st_hh, st_c, *rest = inputs
    w_peep, bsz, rev = rest
    ctx.kind, ctx.mode, ctx.batch_sizes, ctx.reverse = kind, mode, bsz, rev
    ctx.set_materialize_grads(False)  # no zero gradients for the saved outputs (large, never used)
    ctx.flags = (b_hh is not None, s_hh is not None, s_c is not None)
    ctx.n_saved = len(output) - 7
    ctx.n_extra = len(extra)  # tensors of a caller's own, saved after these (_InputNormDirection)
    weights = (w_hh, w_hr, mask, zh, zc, g_hh, g_c, st_hh, st_c, w_peep)
    ctx.save_for_backward(output[0], *output[7:], *weights, *extra)


def _backward(ctx, grads, bw=None, all_saved=None):
    """The custom op's autograd formula (through the backward custom op, traceable), or with
    ``bw`` another function of the same signature (the eager Function: :func:`backward_impl`).
    ``all_saved``: ``ctx.saved_tensors`` when the caller has read it already (non-reentrant
    checkpoint allows one read per backward)."""
    if all_saved is None:
        all_saved = ctx.saved_tensors
    out, *rest = all_saved[: len(all_saved) - ctx.n_extra]
    saved = rest[: ctx.n_saved]
    w_hh, w_hr, mask, zh, zc, g_hh, g_c, st_hh, st_c, w_peep = rest[ctx.n_saved :]
    B, P = ctx.batch_sizes[0], out.shape[1]
    gout = torch.zeros_like(out) if grads[0] is None else grads[0]
    ghn = out.new_zeros(B, P) if grads[1] is None else grads[1]
    if ctx.kind != "lstm":
        gcn = out.new_empty(0)
    else:  # saved[1] is c_{t-1} (N, H)
        gcn = out.new_zeros(B, saved[1].shape[1]) if grads[2] is None else grads[2]
    has_bias, shift_hh, shift_c = ctx.flags
    r = (bw or fused_norm_direction_backward)(
        ctx.kind, ctx.mode, gout, ghn, gcn, out, list(saved), w_hh, has_bias, w_hr, mask, zh, zc, g_hh,
        shift_hh, g_c, shift_c, st_hh, st_c, w_peep, list(ctx.batch_sizes), ctx.reverse,
    )  # fmt: skip
    o = [g if g.numel() else None for g in r]
    # inputs: kind, mode, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, g_hh, s_hh, g_c, s_c, st_*, w_peep,
    # bsz, rev
    return (None, None, r[0], r[1], o[2], r[3], o[4], o[5], None, None, None, r[6], o[7], o[8], o[9],
            None, None, o[10], None, None)  # fmt: skip


fused_norm_direction.register_autograd(_backward, setup_context=_setup_context)
