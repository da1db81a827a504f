"""Fused recurrent kernels: one layer-direction, forward and explicit BPTT, in one op.

:func:`run_direction` is a drop-in for :func:`rnnkit.loop.run_direction` on the standard
cells (LSTM with or without ``proj_size``, peephole LSTM, GRU in torch's form, RNN tanh/relu),
over the same packed time-major layout: ``xp (sum(batch_sizes), G)`` already projected by
:func:`project_input` (whose GEMM over all steps, and its gradient, stay with autograd),
``batch_sizes`` non-increasing, an initial state, ``reverse``. Each step runs one recurrent
GEMM and a fused element-wise pass; backward is explicit BPTT with one GEMM per step and the
recurrent weight gradients as single GEMMs over the whole sequence after the loop
(``dW_hh = Σ_t da_tᵀ h_{t-1}``, stacked).

Two implementations compute the same numbers: the C++ extension (:mod:`.ext`, compiled at
first use; CPU, float32/float64) and pure PyTorch (:mod:`.lstm`, :mod:`.gru`, :mod:`.rnn`;
any device), used when the extension cannot be built, for other devices/dtypes, or when
``RNNKIT_NO_EXT=1``. An optional per-sequence recurrent-dropout mask ``(B, P)`` multiplies
``h_{t-1}`` right before the recurrent GEMM (Gal & Ghahramani 2016); optional zoneout weights
mix each new state with the previous one (Krueger et al. 2017). Under ``torch.compile`` the
same computation runs as the custom op ``rnnkit::fused_direction`` (:mod:`.ops`).

The Greff et al. LSTM ablations (NIG, NFG, NOG, NIAF, NOAF, CIFG, FGR, combined with peepholes and
``proj_size``) and the GRU variants (``reset_after=False``, MUT1–3) run on two generalized
kernels parameterized by layout flags, :mod:`.variants` (custom op
``rnnkit::fused_variant_direction``); :func:`kind_of` names them ``"lstm_v"`` / ``"gru_v"``.
The normalized cells (``norm="layer"`` LSTM/GRU/RNN, ``norm="batch"`` LSTM) have their own
kernels and op, ``rnnkit::fused_norm_direction`` (:mod:`.norm_ops`, :mod:`.norm`); the
functions below route them there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..cells.base import Cell, Params, State
from ..cells.gru import GRUCellMath
from ..cells.lstm import LSTMCellMath
from ..cells.rnn import RNNCellMath
from . import _common, _gemm, ext, lstm_variants, norm_in_kernel, norm_ops, ops, second_order, variants

__all__ = ["supports", "project_input", "run_direction", "run_layer_direction", "backend", "KINDS"]

KINDS = ops.KINDS
_STANDARD = (LSTMCellMath, GRUCellMath, RNNCellMath)


def _is_peephole_lstm(cell: Cell) -> bool:
    """An LSTM whose only option is ``peephole=True`` (Greff's *vanilla* LSTM)."""
    return lstm_variants.flags_of(cell) == lstm_variants.STANDARD | lstm_variants.PEEPHOLE


@_common.per_cell
def kind_of(cell: Cell) -> str | None:
    """The fused kernel of ``cell``, or ``None`` when it has none (a normalized cell with a
    Greff ablation).

    ``"lstm_v"`` / ``"gru_v"``: the Greff ablations and GRU variants (:mod:`.variants`); the
    normalized cells' kinds come from :mod:`.norm_ops`."""
    if getattr(cell, "norm", None) is not None:  # layer/batch norm: kernels/norm_ops.py
        return norm_ops.kind_of(cell)
    if _is_peephole_lstm(cell):
        return "lstm"
    if type(cell) not in _STANDARD or cell.torch_mode() is None:
        found = variants.kind_of(cell)
        return None if found is None else found[0]
    mode = cell.torch_mode()
    return {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}.get(mode or "")


def supports(cell: Cell) -> bool:
    """Whether :func:`run_direction` can run ``cell``."""
    return kind_of(cell) is not None


def saves_output(cell: Cell) -> bool:
    """Whether the fused kernel of ``cell`` keeps the output it returns as a saved tensor of its
    backward (the h-history): the RNN's, the LSTM's without projection (``ops._ALIASES``) and the
    normalized cells' (``norm_ops._setup_context``)."""
    kind = kind_of(cell)
    if kind == "lstm":
        return not getattr(cell, "proj_size", 0)
    return kind in ("rnn_tanh", "rnn_relu") or kind in norm_ops.NORM_KINDS


def backend(x: Tensor) -> str:
    """``"ext"`` (compiled kernels) or ``"pure"`` (PyTorch ops) for data like ``x``."""
    return "ext" if ops.use_ext_for(x) else "pure"


class _Direction(torch.autograd.Function):
    """Autograd node of one fused direction (eager mode; ``rnnkit::fused_direction`` is the
    same computation as a custom op, for torch.compile).

    Either ``xp`` is given, or ``x, w_ih, b_in``: the compiled LSTM kernel projects the input
    itself, other kernels get ``xp`` computed here; backward then maps ``d xp`` (the gate
    gradients) to ``d x, d W_ih, d b``. With the input, a gradient taken with
    ``create_graph=True`` is itself differentiable (:mod:`.second_order` recomputes the
    direction); without it (``xp`` given) differentiating it raises."""

    @staticmethod
    def forward(
        ctx, kind, batch_sizes, reverse, use_ext, save, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep,
        x, w_ih, b_in,
    ):  # fmt: skip
        ctx.kind, ctx.batch_sizes, ctx.reverse, ctx.use_ext = kind, batch_sizes, reverse, use_ext
        ctx.has_bias, ctx.fused_input, ctx.has_b_in = b_hh is not None, x is not None, b_in is not None
        ctx.onednn = _gemm.use_onednn(h0)
        ctx.kernel_proj = x is not None and kind == "lstm" and use_ext
        proj = (x, w_ih, b_in) if ctx.kernel_proj else None
        if x is not None:
            xp = x.new_empty(0) if ctx.kernel_proj else _gemm.linear_nograd(x, w_ih, b_in)
        args = (xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep)
        run = ops.forward_impl
        out, hn, cn, saved = run(kind, batch_sizes, reverse, use_ext, ctx.onednn, *args, save=save, proj=proj,
                                 col_hprev=True)  # fmt: skip
        if not save:
            saved = ()
        empty = w_hh.new_empty(0)
        opt = [empty if t is None else t for t in (w_hr, mask, zh, zc, w_peep, x, w_ih)]
        extra = [empty if t is None else t for t in (h0, c0, b_hh, b_in)] if ctx.fused_input else []
        ctx.save_for_backward(*saved, w_hh, *opt, *extra)  # extra: small (states, biases)
        if kind != "lstm":
            ctx.mark_non_differentiable(cn)
        return out, hn, cn

    @staticmethod
    def backward(ctx, gout, ghn, gcn):
        # create_graph=True: a differentiable graph; batched incoming gradients (jacobian(vectorize=True)):
        # plain ops vmap can batch (the C++ kernels have no batching rule)
        if (torch.is_grad_enabled() or _common.batched((gout, ghn, gcn))) and ctx.fused_input:
            *_, w_hh, w_hr, mask, zh, zc, w_peep, x, w_ih, h0, c0, b_hh, b_in = ctx.saved_tensors
            vals = dict(h0=h0, c0=c0, w_hh=w_hh, b_hh=b_hh, w_hr=w_hr, x=x, w_ih=w_ih, b_in=b_in, mask=mask,
                        zh=zh, zc=zc, w_peep=w_peep)  # fmt: skip
            return second_order.backward(ctx, {k: ops._opt(v) for k, v in vals.items()}, gout, ghn, gcn)
        return _Direction.first_order(ctx, gout, ghn, gcn)

    @staticmethod
    @_common.first_order_only
    def first_order(ctx, gout, ghn, gcn):
        tensors = ctx.saved_tensors  # less the 4 extra that second_order reads
        *saved, w_hh, w_hr, mask, zh, zc, w_peep, x, w_ih = tensors[: len(tensors) - 4 * ctx.fused_input]
        opt = [ops._opt(t) for t in (w_hr, mask, zh, zc, w_peep)]
        # the compiled LSTM kernel sums the input bias's gradient itself (has_bias for the LSTM)
        kernel_db = ctx.kernel_proj and ctx.has_b_in
        has_bias = ctx.has_bias or kernel_db
        grads = ops.backward_impl(
            ctx.kind, ctx.batch_sizes, ctx.reverse, ctx.use_ext, ctx.onednn, has_bias, gout, ghn, gcn, saved,
            w_hh, *opt,
        )  # fmt: skip
        dxp, dh0, dc0, dw_hh, db, dw_hr, dw_peep = grads
        dx = dw_ih = db_in = None
        if ctx.fused_input:  # the projection's gradients, as _gemm.linear's backward
            has_b = ctx.has_b_in and not kernel_db
            dx, dw_ih, db_in = _gemm.linear_grads(dxp, x, w_ih, has_b, ctx.needs_input_grad[15:])
            if kernel_db:
                db_in, db = db, None
            dxp = None
        return (None, None, None, None, None, dxp, dh0, dc0, dw_hh, db, dw_hr, None, None, None, dw_peep,
                dx, dw_ih, db_in)  # fmt: skip


def project_input(cell: Cell, p: Params, x: Tensor) -> Tensor:
    """``cell.project_input(p, x)`` for a standard cell, with oneDNN GEMMs where they apply.

    Same math as the cells: ``x W_ihᵀ + b_ih (+ b_hh for LSTM/RNN)``, one GEMM for all rows.
    """
    kind = kind_of(cell)
    if kind in norm_ops.NORM_KINDS:
        return norm_ops.project_input(cell, p, x)
    if kind is None:
        return cell.project_input(p, x)
    if kind in variants.KINDS:
        return variants.project_input(cell, p, x)
    b = p.get("bias_ih")
    if b is not None and kind != "gru":
        b = b + p["bias_hh"]
    return _gemm.linear(x, p["weight_ih"], b)


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
    training: bool = False,
) -> tuple[Tensor, State]:
    """Fused twin of :func:`rnnkit.loop.run_direction` for the standard cells.

    Args:
        xp: ``cell.project_input(p, x)``, ``(N, G)`` with ``N = sum(batch_sizes)``.
        batch_sizes: active sequences per step, non-increasing.
        h0: initial state, each ``(batch_sizes[0], S_i)``.
        mask: optional recurrent-dropout mask ``(batch_sizes[0], S_0)`` applied to
            ``h_{t-1}`` before the recurrent GEMM.
        use_ext: force the compiled (``True``) or pure (``False``) kernels; default: the
            compiled ones when available for ``xp``'s device and dtype.
        zoneout, zoneout_masks: as :func:`rnnkit.loop.run_direction`: per state component a
            probability, and in training a keep-mask ``(T, B, S_i)`` (``None`` in evaluation,
            where the state is the expectation ``lerp(s̃_t, s_{t-1}, p)``).
        training: the layer's mode (batch norm: batch or running statistics).
    Returns:
        outputs ``(N, S_0)`` and the final state, as the reference loop.
    """
    kind = kind_of(cell)
    if kind is None:
        raise ValueError(
            f"the fused kernels support the standard LSTM/GRU/RNN cells, got {type(cell).__name__}"
        )
    if kind in variants.KINDS:
        return variants.run_direction(
            cell, p, xp, batch_sizes, h0, reverse, mask, use_ext, zoneout, zoneout_masks
        )
    bsz = tuple(map(int, batch_sizes))
    if kind in norm_ops.NORM_KINDS:
        zrows = _zoneout_rows(xp, bsz, h0, zoneout, zoneout_masks)
        return norm_ops.run_direction(cell, p, xp, bsz, h0, reverse, mask, zrows, training)
    zrows = _zoneout_rows(xp, bsz, h0, zoneout, zoneout_masks)
    return _standard(kind, p, xp, bsz, h0, reverse, mask, use_ext, zrows)


def run_layer_direction(
    cell: Cell,
    p: Params,
    x: Tensor,
    batch_sizes: Sequence[int],
    h0: State,
    reverse: bool = False,
    mask: Tensor | None = None,
    zoneout: Sequence[float] | None = None,
    zoneout_masks: Sequence[Tensor | None] | None = None,
    training: bool = False,
) -> tuple[Tensor, State]:
    """:func:`project_input` and :func:`run_direction` in one, on the layer input ``x (N, I)``.

    On the compiled LSTM kernels (standard and Greff layouts; eager mode) the kernel projects
    the input itself, a chunk of steps at a time, right before the steps that read it
    (``InputChunks``, csrc/blocked.h): the ``(N, 4H)`` projection is never written to memory and
    read back (medium shape: 13 MB per call; the forward 8.4 → 7.5 ms). The other standard
    kinds (GRU, RNN, and the LSTM on the pure kernels) get the same GEMM inside their autograd
    node, which so holds ``x`` and ``W_ih`` for second-order gradients (:mod:`.second_order`).
    Elsewhere (variants, normalized cells, torch.compile) the two calls. Same numbers up to
    float rounding."""
    kind = kind_of(cell)
    standard = kind in ("lstm", "gru", "rnn_tanh", "rnn_relu")
    if (kind == "lstm_ln" or (kind == "lstm_bn" and training)) and _input_in_kernel(x, p["weight_ih"]):
        # the layer-norm LSTM, and the batch-norm LSTM in training: the input group in the kernel too
        bsz = tuple(map(int, batch_sizes))
        zrows = _zoneout_rows(x, bsz, h0, zoneout, zoneout_masks)
        return norm_in_kernel.run_direction_input(cell, p, x, bsz, h0, reverse, mask, zrows)
    if torch.compiler.is_compiling() or not (standard or (kind == "lstm_v" and backend(x) == "ext")):
        xp = project_input(cell, p, x)
        zo = (zoneout, zoneout_masks)
        return run_direction(cell, p, xp, batch_sizes, h0, reverse, mask, None, *zo, training)
    b = p.get("bias_ih")  # the cells' project_input: x W_ihᵀ + b_ih (+ b_hh but for the GRU)
    proj = (x, p["weight_ih"], b if b is None or kind == "gru" else b + p["bias_hh"])
    if kind == "lstm_v":  # the Greff layouts: the same in-kernel projection
        return variants.run_direction(
            cell, p, None, batch_sizes, h0, reverse, mask, True, zoneout, zoneout_masks, proj
        )  # type: ignore[arg-type]
    bsz = tuple(map(int, batch_sizes))
    zrows = _zoneout_rows(x, bsz, h0, zoneout, zoneout_masks)
    return _standard(kind, p, None, bsz, h0, reverse, mask, None, zrows, proj)


# W_ih up to this size (bytes): the layer-norm kernel projects the input itself, each thread for
# its rows a chunk of steps at a time, so W_ih must stay in the core's cache (1 MiB L2 here)
# across the chunk. Measured (2 threads, float32, forward): medium (W_ih 0.5 MiB) 1.48-1.57x
# torch.nn.LSTM's time -> 1.30-1.41x; large (4 MiB) 1.26x -> 1.33x, so large keeps the one
# big oneDNN GEMM outside the kernel.
INPUT_IN_KERNEL_MAX_BYTES = 1 << 20


def _input_in_kernel(x: Tensor, w_ih: Tensor) -> bool:
    return (
        not torch.compiler.is_compiling()
        and backend(x) == "ext"
        and w_ih.numel() * w_ih.element_size() <= INPUT_IN_KERNEL_MAX_BYTES
    )


def _standard(kind, p, xp, bsz, h0, reverse, mask, use_ext, zrows, proj=None) -> tuple[Tensor, State]:
    """One direction of a standard kind (LSTM, peephole LSTM, GRU, RNN): the custom op under
    torch.compile, else the autograd node on the chosen backend. ``proj = (x, W_ih, b)``: the
    compiled LSTM kernel projects the input itself (``xp`` is None)."""
    c0 = h0[1] if kind == "lstm" else None
    b_hh = p.get("bias_hh") if kind == "gru" else None
    w_hr = p.get("weight_hr") if kind == "lstm" else None
    w_peep = p.get("weight_peephole") if kind == "lstm" else None
    args = (xp, h0[0], c0, p["weight_hh"], b_hh, w_hr, mask, *zrows, w_peep)
    if torch.compiler.is_compiling():  # one opaque custom op per direction in the graph
        out, hn, cn = ops.fused_direction(kind, *args, list(bsz), reverse)[:3]
    else:
        if use_ext is None:
            use_ext = backend(xp if xp is not None else proj[0]) == "ext"  # type: ignore[index]
        elif use_ext and ext.ops() is None:
            raise RuntimeError("use_ext=True but the rnnkit C++ extension is unavailable")
        proj = proj or (None, None, None)
        save = _common.wants_grad(args + proj)
        out, hn, cn = _common.run_fn(_Direction, save, kind, bsz, reverse, use_ext, save, *args, *proj)
    return out, ((hn, cn) if kind == "lstm" else (hn,))


def _zoneout_rows(xp, bsz, h0, probs, masks) -> tuple[Tensor | None, Tensor | None]:
    """Zoneout weights per packed row ``(N, S_i)`` for ``h`` and ``c`` (``None`` where off)."""
    res: list[Tensor | None] = [None, None]
    if probs is None:
        return None, None
    if len(probs) > len(h0) or len(probs) > 2:
        raise ValueError(f"zoneout: at most one probability per state component (h, c), got {list(probs)}")
    if not any(probs):
        return None, None
    dense = all(b == bsz[0] for b in bsz)
    for i, prob in enumerate(probs):
        if not prob:
            continue
        m = None if masks is None else masks[i]
        if m is None:  # evaluation: the expectation, a constant weight
            w = xp.new_full((1, h0[i].shape[1]), float(prob))
            # one row for all (the kernels read a row-broadcast weight as one (B, S) block): as an
            # (N, S) tensor it was written and then read back cold from memory, the rows waiting
            # on each load (medium-shape LSTM forward with zoneout in evaluation: +17%)
            res[i] = w.expand(xp.shape[0], -1)
        elif dense:
            res[i] = m.reshape(-1, m.shape[-1]).to(xp.dtype).contiguous()
        else:
            res[i] = torch.cat([m[t, :b] for t, b in enumerate(bsz)]).to(xp.dtype)
    return res[0], res[1]
