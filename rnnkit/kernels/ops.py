"""The fused direction as code shared by both backends, and as ``torch.library`` custom ops.

:func:`forward_impl` / :func:`backward_impl` run one direction on the compiled extension or
the pure-PyTorch kernels (same buffers, same numbers). ``rnnkit::fused_direction`` and
``rnnkit::fused_direction_backward`` wrap them as custom operators with fake (meta)
implementations and an autograd formula, so that ``torch.compile(fullgraph=True)`` and
``torch.export`` see one opaque op per layer-direction instead of a Python time loop
(torch.nn's RNNs graph-break there, pytorch #149909). Eager calls use the equivalent
``autograd.Function`` of :mod:`rnnkit.kernels`, which skips the custom-op machinery.

Saved tensors travel as extra outputs of the forward op; where a kernel reuses one buffer
for two roles (``hraw`` is ``out`` without projection, ...) the op returns an empty
placeholder instead, because custom-op outputs may not alias each other.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _gemm, ext, gru, lstm, rnn

KINDS = {"lstm": 0, "gru": 1, "rnn_tanh": 2, "rnn_relu": 3}
_EXT_DTYPES = (torch.float32, torch.float64)


def _opt(t: Tensor | None) -> Tensor | None:
    return t if t is not None and t.numel() else None


def use_ext_for(x: Tensor) -> bool:
    """The compiled kernels for CPU float32/float64 data when they are available."""
    return x.device.type == "cpu" and x.dtype in _EXT_DTYPES and ext.ops() is not None


def refuse_b_hh(op: str, family: str, b_hh: Tensor | None, remedy: str) -> None:
    """The C++ ops' refusal of a ``b_hh`` for a family that reads none (the caller folds it into
    ``xp``), on the pure-PyTorch paths (CUDA, ``RNNKIT_NO_EXT``): one given was ignored there, and
    the outputs silently lacked the bias."""
    if b_hh is not None:
        raise ValueError(
            f"{op}: b_hh must be None for the {family} ({remedy}), got a tensor of shape {list(b_hh.shape)}"
        )


NO_SAVE = 16  # added to the C++ kind: inference, the LSTM kernel saves nothing for backward
# added to the C++ kind by the eager path: the LSTM kernel saves h_{t-1} column-major (its
# transpose dense: no transposed copy before the weight-gradient GEMM); the custom op keeps
# row-major outputs, as its fake implementation and the compilers assume
COL_HPREV = 32


def forward_impl(
    kind, bsz, reverse, use_ext, onednn, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, save=True,
    proj=None, col_hprev=False,
):  # fmt: skip
    """``(out, h_n, c_n, saved)``; ``c_n`` is empty unless ``kind == "lstm"``.

    ``save=False`` (no gradient wanted) lets the compiled LSTM kernel skip writing the buffers
    backward would read (gates, c_{t-1}, tanh c, h_{t-1}): at the medium shape they are most of
    a forward step's memory traffic. ``saved`` is then not to be used.

    ``proj = (x, W_ih, b)`` (compiled LSTM kernel only): ``xp`` is not given (empty) and the
    kernel computes ``x W_ihᵀ + b`` itself, a chunk of steps at a time, in cache."""
    xp, h0 = xp.contiguous(), h0.contiguous()
    if use_ext:
        c0_ = c0.contiguous() if c0 is not None else h0.new_empty(0)
        code = KINDS[kind] + (0 if save or kind != "lstm" else NO_SAVE) + (COL_HPREV if col_hprev else 0)
        args = (code, xp, h0, c0_, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, list(bsz), reverse, onednn)
        if proj is not None:
            args += (proj[0].contiguous(), proj[1], proj[2])
        res = ext.ops().forward(*args)  # type: ignore[union-attr]
        return res[0], res[1], res[2], tuple(res[3:])
    if proj is not None:
        raise ValueError("forward_impl: proj needs the compiled LSTM kernel")
    if kind != "gru":
        refuse_b_hh("rnnkit::fused_direction", "LSTM" if kind == "lstm" else "RNN", b_hh, "add it to xp")
    if kind == "lstm":
        return lstm.forward(xp, h0, c0, w_hh, w_hr, mask, bsz, reverse, zh, zc, w_peep)
    if kind == "gru":
        out, hn, saved = gru.forward(xp, h0, w_hh, b_hh, mask, bsz, reverse, zh)
    else:
        out, hn, saved = rnn.forward(xp, h0, w_hh, mask, kind == "rnn_relu", bsz, reverse, zh)
    return out, hn, h0.new_empty(0), saved


def backward_impl(
    kind, bsz, reverse, use_ext, onednn, has_bias, gout, ghn, gcn, saved, w_hh, w_hr, mask, zh, zc, w_peep
):
    """``(d xp, d h0, d c0, d W_hh, d b_hh, d W_hr, d w_peep)``, ``None`` where absent."""
    if use_ext:  # the kernels make gout dense themselves and drop that copy as soon as they can
        ghn = ghn.contiguous()
        gcn = gcn.contiguous() if kind == "lstm" else ghn.new_empty(0)
        args = (KINDS[kind], gout, ghn, gcn, list(saved), w_hh, w_hr, mask, zh, zc, w_peep, has_bias)
        r = ext.ops().backward(*args, list(bsz), reverse, onednn)  # type: ignore[union-attr]
        return r[0], r[1], _opt(r[2]), r[3], _opt(r[4]), _opt(r[5]), _opt(r[6])
    gout, ghn = gout.contiguous(), ghn.contiguous()
    if kind == "lstm":
        dxp, dh0, dc0, dw_hh, dw_hr, dw_peep = lstm.backward(
            gout, ghn, gcn.contiguous(), saved, w_hh, w_hr, mask, bsz, reverse, zh, zc, w_peep
        )
        return dxp, dh0, dc0, dw_hh, None, dw_hr, dw_peep
    if kind == "gru":
        dxp, dh0, dw_hh, db = gru.backward(gout, ghn, saved, w_hh, has_bias, mask, bsz, reverse, zh)
        return dxp, dh0, None, dw_hh, db, None, None
    dxp, dh0, dw_hh = rnn.backward(gout, ghn, saved, w_hh, mask, kind == "rnn_relu", bsz, reverse, zh)
    return dxp, dh0, None, dw_hh, None, None, None


# -- custom operators ---------------------------------------------------------------------------
# Which saved slots may alias ``out`` or another saved tensor, per kind: (slot, aliased-to).
_ALIASES = {"lstm": ((4, "out"),), "gru": ((3, 2),), "rnn_tanh": ((0, "out"),), "rnn_relu": ((0, "out"),)}


def _pack(kind: str, out: Tensor, saved) -> list[Tensor]:
    saved = list(saved)
    for slot, target in _ALIASES[kind]:
        ref = out if target == "out" else saved[target]  # type: ignore[index]
        if saved[slot] is ref or (saved[slot].numel() and saved[slot].data_ptr() == ref.data_ptr()):
            saved[slot] = out.new_empty(0)
    return saved


def _unpack(kind: str, out: Tensor, saved) -> tuple[Tensor, ...]:
    saved = list(saved)
    for slot, target in _ALIASES[kind]:
        if saved[slot].numel() == 0:
            saved[slot] = out if target == "out" else saved[target]  # type: ignore[index]
    return tuple(saved)


@torch.library.custom_op("rnnkit::fused_direction", mutates_args=())
def fused_direction(
    kind: str,
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
    """``[out, h_n, c_n, *saved]`` of one fused direction (see :func:`rnnkit.kernels.run_direction`)."""
    use_ext = use_ext_for(xp)
    out, hn, cn, saved = forward_impl(
        kind, tuple(batch_sizes), reverse, use_ext, _gemm.use_onednn(xp), xp, h0, c0, w_hh, b_hh, w_hr, mask,
        zh, zc, w_peep,
    )  # fmt: skip
    return [out, hn, cn, *_pack(kind, out, saved)]


@fused_direction.register_fake
def _(kind, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, batch_sizes, reverse):
    N, B, P = xp.shape[0], h0.shape[0], h0.shape[1]
    e = xp.new_empty
    if kind == "lstm":
        H = c0.shape[1]
        hraw = e(N, H) if w_hr is not None else e(0)
        cnew = e(N, H) if w_peep is not None else e(0)
        return [e(N, P), e(B, P), e(B, H), e(N, 4 * H), e(N, H), e(N, H), e(N, P), hraw, cnew]
    if kind == "gru":
        return [
            e(N, P),
            e(B, P),
            e(0),
            e(N, 3 * P),
            e(N, P),  # a_n
            e(N, P),
            e(N, P) if mask is not None else e(0),
        ]
    # h_{t-1} is stored only with a mask or zoneout; else slot 4 is a copy of h0 (rnn.forward)
    keep_prev = mask is not None or zh is not None
    return [e(N, P), e(B, P), e(0), e(N, P) if zh is not None else e(0), e(N, P) if keep_prev else e(B, P)]


@torch.library.custom_op("rnnkit::fused_direction_backward", mutates_args=())
def fused_direction_backward(
    kind: str,
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
    w_peep: Tensor | None,
    batch_sizes: list[int],
    reverse: bool,
) -> list[Tensor]:
    """``[d xp, d h0, d c0, d W_hh, d b_hh, d W_hr, d w_peep]`` (empty where absent)."""
    backend = (use_ext_for(gout), _gemm.use_onednn(gout))
    res = backward_impl(
        kind, tuple(batch_sizes), reverse, *backend, has_bias, gout, ghn, gcn, _unpack(kind, out, saved),
        w_hh, w_hr, mask, zh, zc, w_peep,
    )  # fmt: skip
    return [gout.new_empty(0) if g is None else g for g in res]


@fused_direction_backward.register_fake
def _(kind, gout, ghn, gcn, out, saved, w_hh, has_bias, w_hr, mask, zh, zc, w_peep, batch_sizes, reverse):
    e = gout.new_empty
    G = w_hh.shape[0]
    return [
        e(gout.shape[0], G),
        e(ghn.shape),
        e(gcn.shape) if kind == "lstm" else e(0),
        e(w_hh.shape),
        e(G) if has_bias and kind == "gru" else e(0),
        e(w_hr.shape) if w_hr is not None else e(0),
        e(w_peep.shape) if w_peep is not None else e(0),
    ]


def _setup_context(ctx, inputs, output):
    kind, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, batch_sizes, reverse = inputs
    ctx.kind, ctx.batch_sizes, ctx.reverse, ctx.has_bias = kind, batch_sizes, reverse, b_hh is not None
    ctx.n_saved = len(output) - 3
    ctx.save_for_backward(output[0], *output[3:], w_hh, w_hr, mask, zh, zc, w_peep)


def _backward(ctx, grads):
    out, *rest = ctx.saved_tensors
    saved, (w_hh, w_hr, mask, zh, zc, w_peep) = rest[: ctx.n_saved], rest[ctx.n_saved :]
    B, P = ctx.batch_sizes[0], out.shape[1]
    gout = torch.zeros_like(out) if grads[0] is None else grads[0]
    ghn = out.new_zeros(B, P) if grads[1] is None else grads[1]
    if ctx.kind != "lstm":
        gcn = out.new_empty(0)
    else:  # saved[1] is c_{t-1} (N, H)
        gcn = out.new_zeros(B, saved[1].shape[1]) if grads[2] is None else grads[2]
    r = fused_direction_backward(
        ctx.kind, gout, ghn, gcn, out, list(saved), w_hh, ctx.has_bias, w_hr, mask, zh, zc, w_peep,
        list(ctx.batch_sizes), ctx.reverse,
    )  # fmt: skip
    opt = [g if g.numel() else None for g in r]
    # inputs: kind, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, batch_sizes, reverse
    return None, r[0], r[1], opt[2], r[3], opt[4], opt[5], None, None, None, opt[6], None, None


fused_direction.register_autograd(_backward, setup_context=_setup_context)
