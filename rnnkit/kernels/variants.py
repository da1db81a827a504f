"""Fused directions of the LSTM gate layouts (Greff et al. 2017) and the GRU variants.

Two kernel families, each parameterized by bit ``flags`` instead of one kernel per variant:

* ``"lstm_v"`` — :mod:`.lstm_variants`: NIG, NFG, NOG, NIAF, NOAF, CIFG, alone or combined,
  with peepholes and ``proj_size`` (FGR and normalized cells stay on the reference loop);
* ``"gru_v"`` — :mod:`.gru_variants`: Cho et al.'s ``reset_after=False`` GRU and MUT1–3
  (Jozefowicz et al. 2015) with either reset placement.

Both have a pure-PyTorch implementation and a compiled one (``csrc/variants.cpp``, CPU
float32/float64, same buffers and equations), chosen as for the standard kernels
(:func:`rnnkit.kernels.backend`). Eager calls run an ``autograd.Function``; under
``torch.compile`` the direction is the custom op ``rnnkit::fused_variant_direction`` (saved
tensors as extra outputs, never aliased) with ``rnnkit::fused_variant_direction_backward``,
fake implementations and an autograd formula, so ``fullgraph=True`` holds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..cells.base import Cell, Params, State
from . import _gemm, ext, gru_variants, lstm_variants
from .ops import _opt, use_ext_for

KINDS = {"lstm_v": 0, "gru_v": 1}


def kind_of(cell: Cell) -> tuple[str, int] | None:
    """``(kind, flags)`` of a cell one of the variant kernels runs, else ``None``."""
    f = lstm_variants.flags_of(cell)
    if f is not None:
        return "lstm_v", f
    f = gru_variants.flags_of(cell)
    return None if f is None else ("gru_v", f)


def project_input(cell: Cell, p: Params, x: Tensor) -> Tensor:
    """The cell's ``project_input`` with oneDNN GEMMs where the math is one linear map."""
    if isinstance(cell, lstm_variants.LSTMCellMath):
        b = p["bias_ih"] + p["bias_hh"] if cell.bias else None
        return _gemm.linear(x, p["weight_ih"], b)
    if getattr(cell, "variant", None) is None:  # Cho's GRU: x W_ihᵀ + b_ih
        return _gemm.linear(x, p["weight_ih"], p.get("bias_ih"))
    return cell.project_input(p, x)


def forward_impl(
    kind, flags, bsz, reverse, use_ext, onednn, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep
):
    """``(out, h_n, c_n, saved)``; ``c_n`` is empty for the GRU kernels."""
    xp, h0 = xp.contiguous(), h0.contiguous()
    if use_ext:
        c0_ = c0.contiguous() if c0 is not None else None
        args = (KINDS[kind], flags, xp, h0, c0_, w_hh.contiguous(), b_hh, w_hr, mask, zh, zc, w_peep)
        res = ext.ops().variant_forward(*args, list(bsz), reverse, onednn)  # type: ignore[union-attr]
        return res[0], res[1], res[2], tuple(res[3:])
    if kind == "lstm_v":
        args = (xp, h0, c0.contiguous(), w_hh, w_hr, mask, bsz, reverse, zh, zc, w_peep)
        return lstm_variants.forward(flags, *args)
    out, hn, saved = gru_variants.forward(flags, xp, h0, w_hh, b_hh, mask, bsz, reverse, zh)
    return out, hn, h0.new_empty(0), saved


def backward_impl(kind, flags, bsz, reverse, use_ext, onednn, has_bias, gout, ghn, gcn, saved, w_hh, w_hr,
                  mask, zh, zc, w_peep):  # fmt: skip
    """``(d xp, d h0, d c0, d W_hh, d b_hh, d W_hr, d w_peep)``, ``None`` where absent."""
    gout, ghn = gout.contiguous(), ghn.contiguous()
    if use_ext:
        gcn = gcn.contiguous() if kind == "lstm_v" else ghn.new_empty(0)
        args = (
            KINDS[kind],
            flags,
            gout,
            ghn,
            gcn,
            list(saved),
            w_hh.contiguous(),
            w_hr,
            mask,
            zh,
            zc,
            w_peep,
        )
        r = ext.ops().variant_backward(*args, has_bias, list(bsz), reverse, onednn)  # type: ignore[union-attr]
        return r[0], r[1], _opt(r[2]), r[3], _opt(r[4]), _opt(r[5]), _opt(r[6])
    if kind == "lstm_v":
        args = (gout, ghn, gcn.contiguous(), saved, w_hh, w_hr, mask, bsz, reverse, zh, zc, w_peep)
        dxp, dh0, dc0, dw_hh, dw_hr, dw_peep = lstm_variants.backward(flags, *args)
        return dxp, dh0, dc0, dw_hh, None, dw_hr, dw_peep
    dxp, dh0, dw_hh, db = gru_variants.backward(
        flags, gout, ghn, saved, w_hh, has_bias, mask, bsz, reverse, zh
    )
    return dxp, dh0, None, dw_hh, db, None, None


class _Direction(torch.autograd.Function):
    """Eager autograd node of one variant direction (the custom op below is the same math)."""

    @staticmethod
    def forward(ctx, kind, flags, bsz, reverse, use_ext, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep):
        ctx.meta = (kind, flags, bsz, reverse, use_ext, _gemm.use_onednn(xp), b_hh is not None)
        args = (xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep)
        out, hn, cn, saved = forward_impl(kind, flags, bsz, reverse, use_ext, ctx.meta[5], *args)
        e = w_hh.new_empty(0)
        ctx.save_for_backward(*saved, w_hh, *(e if t is None else t for t in (w_hr, mask, zh, zc, w_peep)))
        if kind != "lstm_v":
            ctx.mark_non_differentiable(cn)
        return out, hn, cn

    @staticmethod
    @once_differentiable
    def backward(ctx, gout, ghn, gcn):
        *saved, w_hh, w_hr, mask, zh, zc, w_peep = ctx.saved_tensors
        kind, flags, bsz, reverse, use_ext, onednn, has_bias = ctx.meta
        opt = [_opt(t) for t in (w_hr, mask, zh, zc, w_peep)]
        if gcn is None or kind != "lstm_v":
            gcn = ghn.new_zeros(ghn.shape[0], saved[1].shape[1]) if kind == "lstm_v" else ghn.new_empty(0)
        g = backward_impl(
            kind, flags, bsz, reverse, use_ext, onednn, has_bias, gout, ghn, gcn, saved, w_hh, *opt
        )
        dxp, dh0, dc0, dw_hh, db, dw_hr, dw_peep = g
        return (None,) * 5 + (dxp, dh0, dc0, dw_hh, db, dw_hr, None, None, None, dw_peep)


def run_direction(
    cell: Cell,
    p: Params,
    xp: Tensor,
    batch_sizes: Sequence[int],
    h0: State,
    reverse: bool = False,
    mask: Tensor | None = None,
    use_ext: bool | None = None,
    zoneout: Sequence[float] | None = None,
    zoneout_masks: Sequence[Tensor | None] | None = None,
) -> tuple[Tensor, State]:
    """:func:`rnnkit.kernels.run_direction` for the variant cells (same arguments)."""
    from . import _zoneout_rows

    found = kind_of(cell)
    if found is None:
        raise ValueError(f"no fused variant kernel for {type(cell).__name__}({cell.describe()})")
    kind, flags = found
    bsz = tuple(int(b) for b in batch_sizes)
    lstm = kind == "lstm_v"
    zh, zc = _zoneout_rows(xp, bsz, h0, zoneout, zoneout_masks)
    args = (
        xp, h0[0], h0[1] if lstm else None, p["weight_hh"], None if lstm else p.get("bias_hh"),
        p.get("weight_hr") if lstm else None, mask, zh, zc, p.get("weight_peephole") if lstm else None,
    )  # fmt: skip
    if torch.compiler.is_compiling():
        out, hn, cn = fused_variant_direction(kind, flags, *args, list(bsz), reverse)[:3]
    else:
        if use_ext is None:
            use_ext = use_ext_for(xp)
        elif use_ext and ext.ops() is None:
            raise RuntimeError("use_ext=True but the rnnkit C++ extension is unavailable")
        out, hn, cn = _Direction.apply(kind, flags, bsz, reverse, use_ext, *args)
    return out, ((hn, cn) if lstm else (hn,))


# -- custom operators ---------------------------------------------------------------------------
@torch.library.custom_op("rnnkit::fused_variant_direction", mutates_args=())
def fused_variant_direction(
    kind: str,
    flags: int,
    xp: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    mask: Tensor | None,
    zh: Tensor | None,
    zc: Tensor | None,
    w_peep: Tensor | None,
    batch_sizes: list[int],
    reverse: bool,
) -> list[Tensor]:
    """``[out, h_n, c_n, *saved]`` of one variant direction (``c_n`` empty for ``gru_v``)."""
    args = (xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep)
    out, hn, cn, saved = forward_impl(
        kind, flags, tuple(batch_sizes), reverse, use_ext_for(xp), _gemm.use_onednn(xp), *args
    )
    return [out, hn, cn, *saved]


@fused_variant_direction.register_fake
def _(kind, flags, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, batch_sizes, reverse):
    N, B, P = xp.shape[0], h0.shape[0], h0.shape[1]
    e = xp.new_empty
    if kind == "lstm_v":
        L, H = lstm_variants.Layout(flags), c0.shape[1]
        hraw = e(N, H) if w_hr is not None else e(0)
        cnew = e(N, H) if "o" in L.peepholes(w_peep, H) else e(0)
        return [e(N, P), e(B, P), e(B, H), e(N, L.ngates * H), e(N, H), e(N, H), e(N, P), hraw, cnew]
    G = gru_variants.Layout(flags)
    opt = [mask is not None, G.reset_after, G.zsrc == "t"]
    return [e(N, P), e(B, P), e(0), e(N, 3 * P), e(N, P), *(e(N, P) if o else e(0) for o in opt)]


@torch.library.custom_op("rnnkit::fused_variant_direction_backward", mutates_args=())
def fused_variant_direction_backward(
    kind: str,
    flags: int,
    gout: Tensor,
    ghn: Tensor,
    gcn: Tensor,
    saved: list[Tensor],
    w_hh: Tensor,
    has_bias: bool,
    w_hr: Tensor | None,
    mask: Tensor | None,
    zh: Tensor | None,
    zc: Tensor | None,
    w_peep: Tensor | None,
    batch_sizes: list[int],
    reverse: bool,
) -> list[Tensor]:
    """``[d xp, d h0, d c0, d W_hh, d b_hh, d W_hr, d w_peep]`` (empty where absent)."""
    backend = (use_ext_for(gout), _gemm.use_onednn(gout))
    res = backward_impl(
        kind, flags, tuple(batch_sizes), reverse, *backend, has_bias, gout, ghn, gcn, tuple(saved), w_hh,
        w_hr, mask, zh, zc, w_peep,
    )  # fmt: skip
    return [gout.new_empty(0) if g is None else g for g in res]


@fused_variant_direction_backward.register_fake
def _(kind, flags, gout, ghn, gcn, saved, w_hh, has_bias, w_hr, mask, zh, zc, w_peep, batch_sizes, reverse):
    e = gout.new_empty
    lstm = kind == "lstm_v"
    return [
        e(saved[0].shape),
        e(ghn.shape),
        e(gcn.shape) if lstm else e(0),
        e(w_hh.shape),
        e(w_hh.shape[0]) if has_bias and not lstm else e(0),
        e(w_hr.shape) if w_hr is not None else e(0),
        e(w_peep.shape) if w_peep is not None else e(0),
    ]


def _setup_context(ctx, inputs, output):
    kind, flags, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, batch_sizes, reverse = inputs
    ctx.meta = (kind, flags, batch_sizes, reverse, b_hh is not None)
    ctx.n_saved = len(output) - 3
    ctx.save_for_backward(*output[3:], w_hh, w_hr, mask, zh, zc, w_peep)


def _backward(ctx, grads):
    kind, flags, batch_sizes, reverse, has_bias = ctx.meta
    saved, (w_hh, w_hr, mask, zh, zc, w_peep) = (
        ctx.saved_tensors[: ctx.n_saved],
        ctx.saved_tensors[ctx.n_saved :],
    )
    B, N, P = (
        batch_sizes[0],
        saved[3 if kind == "lstm_v" else 1].shape[0],
        saved[3 if kind == "lstm_v" else 1].shape[1],
    )
    gout = saved[0].new_zeros(N, P) if grads[0] is None else grads[0]
    ghn = saved[0].new_zeros(B, P) if grads[1] is None else grads[1]
    if kind != "lstm_v":
        gcn = saved[0].new_empty(0)
    else:  # saved[1] is c_{t-1} (N, H)
        gcn = saved[0].new_zeros(B, saved[1].shape[1]) if grads[2] is None else grads[2]
    r = fused_variant_direction_backward(
        kind, flags, gout, ghn, gcn, list(saved), w_hh, has_bias, w_hr, mask, zh, zc, w_peep,
        list(batch_sizes), reverse,
    )  # fmt: skip
    opt = [g if g.numel() else None for g in r]
    # inputs: kind, flags, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, batch_sizes, reverse
    return None, None, r[0], r[1], opt[2], r[3], opt[4], opt[5], None, None, None, opt[6], None, None


fused_variant_direction.register_autograd(_backward, setup_context=_setup_context)
