"""Elman recurrent network: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

``act`` is ``tanh`` or ``relu``. Shapes: ``weight_ih (H, I)``, ``weight_hh (H, H)``,
``bias_ih/bias_hh (H,)``; state ``(h (B, H),)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Cell, Params, ParamSpec, State, StepContext, linear

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class RNNCellMath(Cell):
    """The Elman step, exactly ``torch.nn.RNN``'s."""

    family = "rnn"

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"
    ) -> None:
        if nonlinearity not in _ACTIVATIONS:
            raise ValueError(f"nonlinearity must be one of {sorted(_ACTIVATIONS)}, got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity = nonlinearity
        self.act = _ACTIVATIONS[nonlinearity]

    def param_specs(self) -> list[ParamSpec]:
        H = self.hidden_size
        specs = [ParamSpec("weight_ih", (H, self.input_size)), ParamSpec("weight_hh", (H, H))]
        if self.bias:
            specs += [ParamSpec("bias_ih", (H,)), ParamSpec("bias_hh", (H,))]
        return specs

    def project_input(self, p: Params, x: Tensor) -> Tensor:
        b = p["bias_ih"] + p["bias_hh"] if self.bias else None
        return linear(x, p["weight_ih"], b)

    def step(self, p: Params, xp: Tensor, state: State, ctx: StepContext) -> State:
        (h,) = state
        return (self.act(torch.addmm(xp, ctx.drop_recurrent(h), p["weight_hh"].t())),)

    def torch_mode(self) -> str | None:
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"
