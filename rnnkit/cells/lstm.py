"""Long short-term memory (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000).

Gate order and parameter names are torch's (``i, f, g, o``)::

    i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
    f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
    o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)            (then h_t = W_hr h_t when proj_size > 0)

Shapes: ``weight_ih (4H, I)``, ``weight_hh (4H, P)``, ``bias_ih/bias_hh (4H,)``,
``weight_hr (P, H)``; state ``(h (B, P), c (B, H))`` with ``P = proj_size or H``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Cell, Params, ParamSpec, State, StepContext, linear


class LSTMCellMath(Cell):
    """The classic LSTM step, exactly ``torch.nn.LSTM``'s."""

    family = "lstm"
    state_names = ("h", "c")

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, proj_size: int = 0) -> None:
        super().__init__(input_size, hidden_size, bias)
        self.proj_size = proj_size

    def param_specs(self) -> list[ParamSpec]:
        H, P = self.hidden_size, self.proj_size or self.hidden_size
        specs = [
            ParamSpec("weight_ih", (4 * H, self.input_size)),
            ParamSpec("weight_hh", (4 * H, P)),
        ]
        if self.bias:
            specs += [ParamSpec("bias_ih", (4 * H,)), ParamSpec("bias_hh", (4 * H,))]
        if self.proj_size:
            specs.append(ParamSpec("weight_hr", (self.proj_size, H)))
        return specs

    def state_sizes(self) -> tuple[int, ...]:
        return (self.proj_size or self.hidden_size, self.hidden_size)

    def project_input(self, p: Params, x: Tensor) -> Tensor:
        # Both biases are constant over time: fold them into the one big input GEMM.
        b = p["bias_ih"] + p["bias_hh"] if self.bias else None
        return linear(x, p["weight_ih"], b)

    def step(self, p: Params, xp: Tensor, state: State, ctx: StepContext) -> State:
        h, c = state
        gates = torch.addmm(xp, ctx.drop_recurrent(h), p["weight_hh"].t())
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        if self.proj_size:
            h = h @ p["weight_hr"].t()
        return h, c

    def torch_mode(self) -> str | None:
        return "LSTM"
