"""Gated recurrent unit (Cho et al. 2014), in torch's (cuDNN) form.

Gate order and parameter names are torch's (``r, z, n``)::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

Shapes: ``weight_ih (3H, I)``, ``weight_hh (3H, H)``, ``bias_ih/bias_hh (3H,)``; state
``(h (B, H),)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Cell, Params, ParamSpec, State, StepContext, linear


class GRUCellMath(Cell):
    """The GRU step, exactly ``torch.nn.GRU``'s (reset gate applied after ``W_hn``)."""

    family = "gru"

    def param_specs(self) -> list[ParamSpec]:
        H = self.hidden_size
        specs = [
            ParamSpec("weight_ih", (3 * H, self.input_size)),
            ParamSpec("weight_hh", (3 * H, H)),
        ]
        if self.bias:
            specs += [ParamSpec("bias_ih", (3 * H,)), ParamSpec("bias_hh", (3 * H,))]
        return specs

    def project_input(self, p: Params, x: Tensor) -> Tensor:
        return linear(x, p["weight_ih"], p.get("bias_ih"))

    def step(self, p: Params, xp: Tensor, state: State, ctx: StepContext) -> State:
        (h,) = state
        hh = linear(ctx.drop_recurrent(h), p["weight_hh"], p.get("bias_hh"))
        H = self.hidden_size
        rz = torch.sigmoid(xp[:, : 2 * H] + hh[:, : 2 * H])
        r, z = rz[:, :H], rz[:, H:]
        n = torch.tanh(xp[:, 2 * H :] + r * hh[:, 2 * H :])
        return (torch.lerp(n, h, z),)  # (1 - z) n + z h

    def torch_mode(self) -> str | None:
        return "GRU"
