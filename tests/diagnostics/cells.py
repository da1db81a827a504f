"""Tiny custom cells for the diagnostics tests (not part of the library)."""

from __future__ import annotations

import torch

from rnnkit.cells.base import Cell, ParamSpec, linear
from rnnkit.layers import RecurrentStack


class LinearCell(Cell):
    """``h_t = W_ih x_t + W_hh h_{t-1}``: no activation, so ``∂h_t/∂h_{t-1} = W_hh`` exactly.
    Not a torch configuration (``torch_mode()`` is None) and without a ``gates`` hook."""

    family = "linear"

    def param_specs(self):
        H = self.hidden_size
        return [ParamSpec("weight_ih", (H, self.input_size)), ParamSpec("weight_hh", (H, H))]

    def project_input(self, p, x):
        return linear(x, p["weight_ih"])

    def step(self, p, xp, state, ctx):
        return (xp + state[0] @ p["weight_hh"].t(),)


class GatedLinearCell(LinearCell):
    """LinearCell offering the ``gates`` hook: one fake gate ``a = σ(h_{t-1} + xp)``."""

    def gates(self, p, xp, state):
        return {"a": torch.sigmoid(state[0] + xp), "hook_t": xp * 0 + 7.0}


class FakeLSTM(Cell):
    """Claims the 'lstm' family but is not torch's (torch_mode None), no hook: the activity
    code must not replay the standard LSTM math on it."""

    family = "lstm"

    def param_specs(self):
        return [ParamSpec("weight_ih", (self.hidden_size, self.input_size))]

    def project_input(self, p, x):
        return linear(x, p["weight_ih"])

    def step(self, p, xp, state, ctx):
        return (torch.tanh(xp + state[0]),)


def stack(cell_cls, input_size: int, hidden_size: int, **kw) -> RecurrentStack:
    return RecurrentStack(lambda n: cell_cls(n, hidden_size), input_size, hidden_size, **kw)


def orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))
