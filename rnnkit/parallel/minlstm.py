"""minLSTM (Feng et al. 2024, "Were RNNs All We Needed?", arXiv:2410.01201)::

    f_t = σ(W_f x_t + b_f),  i_t = σ(W_i x_t + b_i),  h̃_t = W_h x_t + b_h
    f′_t = f_t / (f_t + i_t),  i′_t = i_t / (f_t + i_t)
    h_t = f′_t ⊙ h_{t−1} + i′_t ⊙ h̃_t

a linear scan with ``a_t = f′_t, b_t = i′_t ⊙ h̃_t``. ``log_space=True`` selects the paper's
log-space form: ``h̃_t = g(W_h x_t + b_h)`` (positive, see :func:`rnnkit.parallel.mingru.g`),
``log f′ = −softplus(d)``, ``log i′ = −softplus(−d)`` with ``d = softplus(−k_f) − softplus(−k_i)``,
and the Heinsen log-space scan. Parameters: ``weight_ih_l{k} (3H, H_in)`` (rows ``f, i, h̃``),
``bias_ih_l{k} (3H,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..kernels._common import batched
from .mingru import MinGRU, differentiable_backward, log_g, scan_forward


class _MinLSTMScan(torch.autograd.Function):
    """``u = [k_f, k_i, h̃] (T, B, 3H) -> h`` with a hand-written backward, as minGRU's: it keeps
    ``u, a, h`` (autograd's composition kept ``f, i, f + i, i′`` and ``f′`` besides: a training
    step took more memory than nn.LSTM's). ``a = f′ = σ(d)`` with ``d = log f − log i =
    softplus(−k_i) − softplus(−k_f)``, ``b = i′ ⊙ h̃ = (1 − a) ⊙ h̃``. Under ``create_graph=True``
    it differentiates plain ops instead, as minGRU's."""

    @staticmethod
    def forward(ctx, u: Tensor, h0: Tensor | None, reverse: bool) -> Tensor:
        return scan_forward(ctx, u, h0, reverse, lstm_coefficients)

    @staticmethod
    def backward(ctx, gh: Tensor):
        # create_graph=True, or a batched gh (jacobian(vectorize=True)): vmap cannot batch the in-place ops
        if torch.is_grad_enabled() or batched((gh,)):
            return differentiable_backward(ctx, gh, lstm_coefficients)
        u, a, h, h0 = ctx.saved_tensors
        kf, ki, v = u.chunk(3, -1)
        da, db, dh0 = torch.ops.rnnkit.linear_scan_backward(gh, a, h, h0, 0, ctx.reverse)
        du = torch.empty_like(u)
        dkf, dki, dv = du.chunk(3, -1)
        dv.copy_(db).addcmul_(db, a, value=-1)  # ∂h̃ = ∂b ⊙ (1 − a)
        dd = da.addcmul_(db, v, value=-1).mul_(a).addcmul_(da, a, value=-1)  # (∂a − ∂b ⊙ h̃) σ'(d)
        del db  # the step is memory-bound: no temporaries below
        if torch.compiler.is_compiling():  # dynamo refuses out= into a non-contiguous view
            sf, si = dkf.copy_(kf).sigmoid_(), dki.copy_(ki).sigmoid_()
        else:  # eager: one pass fewer (the copy) over 2/3 of du
            sf, si = torch.sigmoid(kf, out=dkf), torch.sigmoid(ki, out=dki)
        sf.sub_(1).mul_(dd).neg_()  # ∂d/∂k_f = σ(−k_f) = 1 − σ(k_f)
        si.sub_(1).mul_(dd)  # ∂d/∂k_i = −σ(−k_i)
        return du, (dh0 if h0 is not None else None), None


def coefficient_a(u: Tensor) -> Tensor:
    """``a = f′ = f / (f + i) = σ(softplus(−k_i) − softplus(−k_f))`` from ``u = [k_f, k_i, h̃]``:
    finite where both gates underflow (``f / (f + i)`` is ``0 / 0`` in float32 once both
    ``k < −104``), two full-size temporaries at most."""
    kf, ki, _ = u.chunk(3, -1)
    d = F.softplus(ki.neg())
    d.sub_(F.softplus(kf.neg()))
    return d.sigmoid_()


def lstm_coefficients(u: Tensor) -> tuple[Tensor, Tensor]:
    """minLSTM's ``(a, b) = (f′, i′ ⊙ h̃)`` from ``u = [k_f, k_i, h̃]``."""
    a = coefficient_a(u)  # f / (f + i)
    v = u.chunk(3, -1)[2]
    return a, torch.addcmul(v, a, v, value=-1)  # i / (f + i) ⊙ h̃


class MinLSTM(MinGRU):
    """minLSTM layer stack; ``forward(input, hx=None, lengths=None) -> (output, h_n)`` (one state, ``h``).

    Args: as :class:`torch.nn.GRU`, plus ``log_space``. Shapes as :class:`rnnkit.MinGRU`.
    """

    gates = 3
    _fused_scan = _MinLSTMScan

    def coefficients(self, u: Tensor) -> tuple[Tensor, Tensor]:
        kf, ki, v = u.chunk(3, -1)
        if self.log_space:
            d = F.softplus(-kf) - F.softplus(-ki)
            return -F.softplus(d), -F.softplus(-d) + log_g(v)
        return lstm_coefficients(u)
