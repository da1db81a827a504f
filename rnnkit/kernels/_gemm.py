"""The GEMMs of the fused kernels: oneDNN's inner product where it applies, else BLAS.

On the CPU in float32 torch routes ``mm``/``addmm`` to MKL, while ``torch.nn.LSTM`` runs on
oneDNN (mkldnn), whose GEMMs were 1.6-2.7x faster than MKL's on the development machine
(an AMD EPYC, where MKL avoids its best code paths) at the shapes of an RNN step. To be
compared fairly with torch the fused kernels use the same library: the recurrent weight is
packed once per call (``mkldnn::_reorder_linear_weight``) and every step is one
``mkldnn::_linear_pointwise`` (the op torch.compile's CPU backend emits for linear layers).
float64, other devices, builds without oneDNN, or ``RNNKIT_NO_ONEDNN=1`` use ``torch.mm``, and
so do small products (``rows * in * out < 2**20``), where oneDNN's fixed cost per call (about
10 µs) exceeds BLAS's whole run time. The weight and input gradients (:func:`mm_tn`,
:func:`mm`) go, where the compiled extension is loaded, to its brgemm ops instead
(``rnnkit_ext::mm_tn``/``mm_nn``): oneDNN's linear reordered an operand at every call.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

ONEDNN_MIN_WORK = 1 << 20  # rows * in * out below which BLAS wins (measured: crossover ~1e6)


@functools.cache
def _onednn_built() -> bool:
    """Whether this torch has oneDNN and its linear ops: fixed for the process (~0.35 us a check,
    a few per layer call)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def use_onednn(t: Tensor) -> bool:
    """Whether GEMMs on tensors like ``t`` go through oneDNN (``RNNKIT_NO_ONEDNN=1``: never; read
    at each call)."""
    return (
        t.dtype == torch.float32
        and t.device.type == "cpu"
        and _onednn_built()
        and os.environ.get("RNNKIT_NO_ONEDNN", "") in ("", "0")
    )


class Linear:
    """``x ↦ x Wᵀ`` for a fixed ``W (out, in)`` applied to many small ``x``."""

    def __init__(self, w: Tensor, batch: int) -> None:
        self.w, self.batch = w, batch
        self.dnn = use_onednn(w)
        self.packed: Tensor | None = None  # packed on first use: packing costs ~0.1-0.2 ms

    def __call__(self, x: Tensor, base: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
        """``base + x Wᵀ + bias`` as a new tensor (``base``/``bias`` optional, not both)."""
        if self.dnn and x.shape[0] * self.w.numel() >= ONEDNN_MIN_WORK:
            if self.packed is None:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(
                    self.w.detach().contiguous(), self.batch
                )
            if base is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, base, self.packed, None, "add")
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")
        if base is not None:
            return torch.addmm(base, x, self.w.t())
        return torch.mm(x, self.w.t()) if bias is None else torch.addmm(bias, x, self.w.t())


def _ext_gemm(a: Tensor, work: int):
    """The compiled extension's ops for an eager GEMM of ``work`` multiply-adds on CPU float32
    ``a`` (the same switches as oneDNN's: ``RNNKIT_NO_ONEDNN``, and the kernels' backend, which
    tests pin), else ``None``. Not under the compilers: the ops have no fake implementation."""
    if work < ONEDNN_MIN_WORK or not use_onednn(a) or type(a) is not torch.Tensor:
        return None
    if torch.compiler.is_compiling():
        return None
    from . import backend, ext  # (looked up per call, as the kernels' backend)

    return ext.loaded_ops() if backend(a) == "ext" else None


def mm_tn(a: Tensor, b: Tensor) -> Tensor:
    """``aᵀ b`` for tall ``a (N, M)``, ``b (N, K)``: a weight gradient summed over all rows."""
    work = a.numel() * b.shape[1]
    ext_ops = _ext_gemm(a, work)
    if ext_ops is not None:  # brgemm on a in place (csrc/common.h, tn_brgemm): ~1.3x oneDNN's linear
        return ext_ops.mm_tn(a, b)
    # oneDNN only on dense operands: strided ones hit its (very slow) reference kernel.
    # As (bᵀ a)ᵀ: oneDNN then copies the narrower operand only.
    dense = a.is_contiguous() and b.is_contiguous()
    if dense and use_onednn(a) and work >= ONEDNN_MIN_WORK:
        return torch.ops.mkldnn._linear_pointwise(b.t(), a.t(), None, "none", [], "").t().contiguous()
    return torch.mm(a.t(), b)


def mm(a: Tensor, w: Tensor) -> Tensor:
    """``a w`` for tall ``a (N, M)`` and a weight ``w (M, K)``."""
    work = a.numel() * w.shape[1]
    ext_ops = _ext_gemm(a, work)
    if ext_ops is not None:  # brgemm on w in place (nn_brgemm); oneDNN's linear reordered it each call
        return ext_ops.mm_nn(a, w)
    if use_onednn(a) and work >= ONEDNN_MIN_WORK:
        return torch.ops.mkldnn._linear_pointwise(a, w.t().contiguous(), None, "none", [], "")
    return torch.mm(a, w)


class _ProjectInput(torch.autograd.Function):
    """``x Wᵀ + b`` with oneDNN GEMMs forward and backward (the input projection)."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return linear_nograd(x, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        return linear_grads(dy, x, w, ctx.has_bias, ctx.needs_input_grad)


def linear_grads(dy: Tensor, x: Tensor, w: Tensor, has_bias: bool, needs) -> tuple:
    """``(dx, dW, db)`` of ``y = x Wᵀ + b`` from ``dy``; ``needs``: which of the three are wanted
    (``None`` where not, or where there is no bias)."""
    dy = dy.contiguous()
    dx = mm(dy, w) if needs[0] else None
    dw = mm_tn(dy, x) if needs[1] else None
    db = dy.sum(0) if has_bias and needs[2] else None
    return dx, dw, db


def _on_onednn(x: Tensor, w: Tensor) -> bool:
    """Whether :func:`linear` runs ``x Wᵀ`` as oneDNN's inner product (2-D CPU float32 ``x``,
    enough work)."""
    return use_onednn(x) and x.dim() == 2 and x.numel() * w.shape[0] >= ONEDNN_MIN_WORK


def _plain(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return x @ w.t() if b is None else torch.addmm(b, x, w.t())


def linear_nograd(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``x Wᵀ + b`` for 2-D ``x`` by the very GEMM :func:`linear` would run, outside autograd
    (inside an autograd node that differentiates it itself)."""
    if _on_onednn(x, w):
        return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return _plain(x, w, b)


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``x Wᵀ + b`` for 2-D ``x``, differentiable; oneDNN GEMMs when they apply."""
    if torch.compiler.is_compiling():  # the compiler picks the GEMM itself
        return _plain(x, w, b)
    return _ProjectInput.apply(x, w, b) if _on_onednn(x, w) else _plain(x, w, b)
