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

from .mingru import MinGRU, log_g


class MinLSTM(MinGRU):
    """minLSTM layer stack; ``forward(input, h0=None) -> (output, h_n)`` (one state, ``h``).

    Args: as :class:`torch.nn.GRU`, plus ``log_space``. Shapes as :class:`rnnkit.MinGRU`.
    """

    gates = 3

    def coefficients(self, u: Tensor) -> tuple[Tensor, Tensor]:
        kf, ki, v = u.chunk(3, -1)
        if self.log_space:
            d = F.softplus(-kf) - F.softplus(-ki)
            return -F.softplus(d), -F.softplus(-d) + log_g(v)
        f, i = torch.sigmoid(kf), torch.sigmoid(ki)
        s = f + i
        return f / s, i / s * v
