"""Fused directions of the LSTM gate layouts (Greff et al. 2017) and the GRU variants.

Two kernel families, each parameterized by bit ``flags`` instead of one kernel per variant:

* ``"lstm_v"`` — :mod:`.lstm_variants`: NIG, NFG, NOG, NIAF, NOAF, CIFG and FGR (state
  ``(h, c, gates)``), alone or combined, with peepholes and ``proj_size`` (normalized cells
  stay on the reference loop);
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

from ..cells.base import Cell, Params, State
from . import _common, _gemm, ext, gru_variants, lstm_variants
from .ops import _opt, refuse_b_hh, use_ext_for

KINDS = {"lstm_v": 0, "gru_v": 1}


@_common.per_cell
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


NO_SAVE = 1024  # an LSTM-layout flag for the C++ kernel: inference, save nothing for backward


def forward_impl(kind, flags, bsz, reverse, use_ext, onednn, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc,
                 w_peep, a0=None, w_gg=None, zg=None, proj=None):  # fmt: skip
    """``(out, h_n, c_n, gates_n, saved)``; ``c_n`` is empty for the GRU kernels, ``gates_n``
    (FGR's final gate state) without FGR. ``proj = (x, W_ih, b)``: the compiled LSTM-layout
    kernel projects the input itself (``xp`` empty), as :func:`rnnkit.kernels.ops.forward_impl`."""
    xp, h0 = xp.contiguous(), h0.contiguous()
    a0 = a0.contiguous() if a0 is not None else None
    if use_ext:
        c0_ = c0.contiguous() if c0 is not None else None
        args = (
            KINDS[kind],
            flags,
            xp,
            h0,
            c0_,
            w_hh.contiguous(),
            b_hh,
            w_hr,
            mask,
            zh,
            zc,
            w_peep,
            a0,
            w_gg,
            zg,
        )
        extra = () if proj is None else (proj[0].contiguous(), proj[1], proj[2])
        res = ext.ops().variant_forward(*args, list(bsz), reverse, onednn, *extra)  # type: ignore[union-attr]
        return res[0], res[1], res[2], res[3], tuple(res[4:])
    if proj is not None:
        raise ValueError("forward_impl: proj needs the compiled LSTM-layout kernel")
    if kind == "lstm_v":
        refuse_b_hh("rnnkit::fused_variant_direction", "LSTM layouts", b_hh, "the caller adds it to xp")
        args = (xp, h0, c0.contiguous(), w_hh, w_hr, mask, bsz, reverse, zh, zc, w_peep, a0, w_gg, zg)
        return lstm_variants.forward(flags, *args)
    out, hn, saved = gru_variants.forward(flags, xp, h0, w_hh, b_hh, mask, bsz, reverse, zh)
    return out, hn, h0.new_empty(0), h0.new_empty(0), saved


def backward_impl(kind, flags, bsz, reverse, use_ext, onednn, has_bias, gout, ghn, gcn, gan, saved, w_hh,
                  w_hr, mask, zh, zc, w_peep, w_gg=None, zg=None):  # fmt: skip
    """``(d xp, d h0, d c0, d a0, d W_hh, d b_hh, d W_hr, d w_peep, d W_gg)``, ``None`` where
    absent; ``gan`` is the gradient of FGR's final gate state (ignored without FGR)."""
    gout, ghn = gout.contiguous(), ghn.contiguous()
    gan = gan.contiguous() if w_gg is not None else ghn.new_empty(0)
    if use_ext:
        gcn = gcn.contiguous() if kind == "lstm_v" else ghn.new_empty(0)
        args = (
            KINDS[kind],
            flags,
            gout,
            ghn,
            gcn,
            gan,
            list(saved),
            w_hh.contiguous(),
            w_hr,
            mask,
            zh,
            zc,
            w_peep,
        )
        r = ext.ops().variant_backward(*args, w_gg, zg, has_bias, list(bsz), reverse, onednn)  # type: ignore[union-attr]
        return (r[0], r[1], *(_opt(t) for t in r[2:4]), r[4], *(_opt(t) for t in r[5:]))
    if kind == "lstm_v":
        args = (
            gout,
            ghn,
            gcn.contiguous(),
            gan,
            saved,
            w_hh,
            w_hr,
            mask,
            bsz,
            reverse,
            zh,
            zc,
            w_peep,
            w_gg,
            zg,
        )
        dxp, dh0, dc0, da0, dw_hh, dw_hr, dw_peep, dw_gg = lstm_variants.backward(flags, *args)
        return dxp, dh0, dc0, da0, dw_hh, None, dw_hr, dw_peep, dw_gg
    dxp, dh0, dw_hh, db = gru_variants.backward(
        flags, gout, ghn, saved, w_hh, has_bias, mask, bsz, reverse, zh
    )
    return dxp, dh0, None, None, dw_hh, db, None, None, None


class _Direction(torch.autograd.Function):
    """Eager autograd node of one variant direction (the custom op below is the same math)."""

    @staticmethod
    def forward(
        ctx, kind, flags, bsz, reverse, use_ext, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg,
        zg, x, w_ih, b_in,
    ):  # fmt: skip
        ctx.meta = (kind, flags, bsz, reverse, use_ext, _gemm.use_onednn(h0), b_hh is not None)
        ctx.fused_input, ctx.has_b_in = x is not None, b_in is not None
        proj = (x, w_ih, b_in) if x is not None else None
        if proj is not None:
            xp = x.new_empty(0)
        args = (xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg, zg)
        run = forward_impl
        out, hn, cn, gn, saved = run(kind, flags, bsz, reverse, use_ext, ctx.meta[5], *args, proj=proj)
        e = w_hh.new_empty(0)
        opt = (w_hr, mask, zh, zc, w_peep, w_gg, zg, x, w_ih)
        ctx.save_for_backward(*saved, w_hh, *(e if t is None else t for t in opt))
        ctx.n_saved = len(saved)
        if kind != "lstm_v":
            ctx.mark_non_differentiable(cn)
        if not gn.numel():
            ctx.mark_non_differentiable(gn)
        return out, hn, cn, gn

    @staticmethod
    @_common.first_order_only
    def backward(ctx, gout, ghn, gcn, gan):
        all_saved = ctx.saved_tensors  # read once: non-reentrant checkpoint unpacks each tensor once
        saved, (w_hh, *rest) = all_saved[: ctx.n_saved], all_saved[ctx.n_saved :]
        kind, flags, bsz, reverse, use_ext, onednn, has_bias = ctx.meta
        *opt, x, w_ih = [_opt(t) for t in rest]
        if kind != "lstm_v":
            gcn = ghn.new_empty(0)
        args = (has_bias, gout, ghn, gcn, gan, saved, w_hh, *opt)
        dxp, dh0, dc0, da0, dw_hh, db, dw_hr, dw_peep, dw_gg = backward_impl(
            kind, flags, bsz, reverse, use_ext, onednn, *args
        )
        dx = dw_ih = db_in = None
        if ctx.fused_input:  # the projection's gradients, as _gemm.linear's backward
            dx, dw_ih, db_in = _gemm.linear_grads(dxp, x, w_ih, ctx.has_b_in, ctx.needs_input_grad[18:])
            dxp = None
        grads = (dxp, dh0, dc0, dw_hh, db, dw_hr, None, None, None, dw_peep, da0, dw_gg, None)
        return (None,) * 5 + grads + (dx, dw_ih, db_in)


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
    proj: tuple[Tensor, Tensor, Tensor | None] | None = None,
) -> tuple[Tensor, State]:
    """:func:`rnnkit.kernels.run_direction` for the variant cells (same arguments; FGR's
    state is ``(h, c, gates)``, with an optional third zoneout probability and mask).
    ``proj = (x, W_ih, b)`` with ``xp=None``: the compiled LSTM-layout kernel projects the
    input itself (eager mode; :func:`rnnkit.kernels.run_layer_direction`)."""
    from . import _zoneout_rows

    found = kind_of(cell)
    if found is None:
        raise ValueError(f"no fused variant kernel for {type(cell).__name__}({cell.describe()})")
    kind, flags = found
    bsz = tuple(map(int, batch_sizes))
    lstm, fgr = kind == "lstm_v", len(h0) == 3
    ref = xp if proj is None else proj[0]  # rows and dtype of the direction
    zmasks = None if zoneout_masks is None else zoneout_masks[:2]
    zh, zc = _zoneout_rows(ref, bsz, h0[:2], None if zoneout is None else zoneout[:2], zmasks)
    zg = None
    if fgr and zoneout is not None and len(zoneout) == 3:  # zoneout on the gate state
        zmasks = None if zoneout_masks is None else zoneout_masks[2:]
        zg = _zoneout_rows(ref, bsz, h0[2:], zoneout[2:], zmasks)[0]
    args = (
        xp, h0[0], h0[1] if lstm else None, p["weight_hh"], None if lstm else p.get("bias_hh"),
        p.get("weight_hr") if lstm else None, mask, zh, zc, p.get("weight_peephole") if lstm else None,
        h0[2] if fgr else None, p["weight_gg"] if fgr else None, zg,
    )  # fmt: skip
    if torch.compiler.is_compiling():
        out, hn, cn, gn = fused_variant_direction(kind, flags, *args, list(bsz), reverse)[:4]
    else:
        if use_ext is None:
            use_ext = use_ext_for(ref)
        elif use_ext and ext.ops() is None:
            raise RuntimeError("use_ext=True but the rnnkit C++ extension is unavailable")
        proj = proj or (None, None, None)
        save = _common.wants_grad(args + proj)
        if lstm and use_ext and not save:
            flags |= NO_SAVE  # inference: the C++ kernel keeps step-sized scratch, nothing for backward
        out, hn, cn, gn = _common.run_fn(_Direction, save, kind, flags, bsz, reverse, use_ext, *args, *proj)
    return out, ((hn, cn, gn) if fgr else (hn, cn) if lstm else (hn,))


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
    a0: Tensor | None,
    w_gg: Tensor | None,
    zg: Tensor | None,
    batch_sizes: list[int],
    reverse: bool,
) -> list[Tensor]:
    """``[out, h_n, c_n, gates_n, *saved]`` of one variant direction (``c_n`` empty for
    ``gru_v``; ``gates_n``, FGR's final gate state, empty without FGR)."""
    args = (xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg, zg)
    out, hn, cn, gn, saved = forward_impl(
        kind, flags, tuple(batch_sizes), reverse, use_ext_for(xp), _gemm.use_onednn(xp), *args
    )
    return [out, hn, cn, gn, *saved]


@fused_variant_direction.register_fake
def _(kind, flags, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg, zg, batch_sizes, reverse):
    N, B, P = xp.shape[0], h0.shape[0], h0.shape[1]
    e = xp.new_empty
    if kind == "lstm_v":
        L, H = lstm_variants.Layout(flags), c0.shape[1]
        hraw = e(N, H) if w_hr is not None else e(0)
        cnew = e(N, H) if "o" in L.peepholes(w_peep, H) else e(0)
        gn, aprev = (e(B, a0.shape[1]), e(N, a0.shape[1])) if L.fgr else (e(0), e(0))
        return [
            e(N, P),
            e(B, P),
            e(B, H),
            gn,
            e(N, L.ngates * H),
            e(N, H),
            e(N, H),
            e(N, P),
            hraw,
            cnew,
            aprev,
        ]
    G = gru_variants.Layout(flags)
    opt = [mask is not None, G.reset_after, G.zsrc == "t"]
    return [e(N, P), e(B, P), e(0), e(0), e(N, 3 * P), e(N, P), *(e(N, P) if o else e(0) for o in opt)]


@torch.library.custom_op("rnnkit::fused_variant_direction_backward", mutates_args=())
def fused_variant_direction_backward(
    kind: str,
    flags: int,
    gout: Tensor,
    ghn: Tensor,
    gcn: Tensor,
    gan: Tensor,
    saved: list[Tensor],
    w_hh: Tensor,
    has_bias: bool,
    w_hr: Tensor | None,
    mask: Tensor | None,
    zh: Tensor | None,
    zc: Tensor | None,
    w_peep: Tensor | None,
    w_gg: Tensor | None,
    zg: Tensor | None,
    batch_sizes: list[int],
    reverse: bool,
) -> list[Tensor]:
    """``[d xp, d h0, d c0, d a0, d W_hh, d b_hh, d W_hr, d w_peep, d W_gg]`` (empty where
    absent)."""
    backend = (use_ext_for(gout), _gemm.use_onednn(gout))
    res = backward_impl(
        kind, flags, tuple(batch_sizes), reverse, *backend, has_bias, gout, ghn, gcn, gan, tuple(saved), w_hh,
        w_hr, mask, zh, zc, w_peep, w_gg, zg,
    )  # fmt: skip
    return [gout.new_empty(0) if g is None else g for g in res]


@fused_variant_direction_backward.register_fake
def _(kind, flags, gout, ghn, gcn, gan, saved, w_hh, has_bias, w_hr, mask, zh, zc, w_peep, w_gg, zg,
      batch_sizes, reverse):  # fmt: skip
    e = gout.new_empty
    lstm = kind == "lstm_v"
    return [
        e(saved[0].shape),
        e(ghn.shape),
        e(gcn.shape) if lstm else e(0),
        e(gan.shape) if w_gg is not None else e(0),
        e(w_hh.shape),
        e(w_hh.shape[0]) if has_bias and not lstm else e(0),
        e(w_hr.shape) if w_hr is not None else e(0),
        e(w_peep.shape) if w_peep is not None else e(0),
        e(w_gg.shape) if w_gg is not None else e(0),
    ]


def _setup_context(ctx, inputs, output):
    kind, flags, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg, zg, batch_sizes, reverse = (
        inputs
    )
    ctx.meta = (kind, flags, batch_sizes, reverse, b_hh is not None)
    ctx.n_saved = len(output) - 4
    ctx.save_for_backward(*output[4:], w_hh, w_hr, mask, zh, zc, w_peep, w_gg, zg)


def _backward(ctx, grads):
    kind, flags, batch_sizes, reverse, has_bias = ctx.meta
    all_saved = ctx.saved_tensors  # read once: non-reentrant checkpoint unpacks each tensor once
    saved, rest = all_saved[: ctx.n_saved], all_saved[ctx.n_saved :]
    w_hh, w_hr, mask, zh, zc, w_peep, w_gg, zg = rest
    hp = saved[3 if kind == "lstm_v" else 1]  # h_{t-1} (N, P)
    B, N, P = batch_sizes[0], hp.shape[0], hp.shape[1]
    gout = hp.new_zeros(N, P) if grads[0] is None else grads[0]
    ghn = hp.new_zeros(B, P) if grads[1] is None else grads[1]
    if kind != "lstm_v":
        gcn = hp.new_empty(0)
    else:  # saved[1] is c_{t-1} (N, H)
        gcn = hp.new_zeros(B, saved[1].shape[1]) if grads[2] is None else grads[2]
    if w_gg is None:
        gan = hp.new_empty(0)
    else:  # the last saved tensor is a_{t-1} (N, S)
        gan = hp.new_zeros(B, saved[-1].shape[1]) if grads[3] is None else grads[3]
    r = fused_variant_direction_backward(
        kind, flags, gout, ghn, gcn, gan, list(saved), w_hh, has_bias, w_hr, mask, zh, zc, w_peep, w_gg, zg,
        list(batch_sizes), reverse,
    )  # fmt: skip
    o = [g if g.numel() else None for g in r]
    # inputs: kind, flags, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, a0, w_gg, zg, sizes, reverse
    grads = (r[0], r[1], o[2], r[4], o[5], o[6], None, None, None, o[7], o[3], o[8])
    return (None, None, *grads, None, None, None)


fused_variant_direction.register_autograd(_backward, setup_context=_setup_context)
