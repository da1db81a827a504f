"""Elman recurrent network (Elman 1990): ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``.

``act`` is ``tanh`` or ``relu``. Shapes: ``weight_ih (H, I)``, ``weight_hh (H, H)``,
``bias_ih/bias_hh (H,)``; state ``(h (B, H),)``.

Option ``norm='layer'`` (Ba et al. 2016, eq. 4 with the LSTM's placement rule): the input
and recurrent products are layer-normalized separately, biases added after::

    h_t = act(LN(W_ih x_t; γ_ih, β_ih) + LN(W_hh h_{t-1}; γ_hh, β_hh) + b_ih + b_hh)

with ``weight_ln_ih/bias_ln_ih``, ``weight_ln_hh/bias_ln_hh`` ``(H,)`` (gains init 1, shifts 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Cell, Params, ParamSpec, State, StepContext, linear
from .norm import check_norm, layer_norm, norm_specs

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


class RNNCellMath(Cell):
    """The Elman step, exactly ``torch.nn.RNN``'s unless ``norm='layer'``."""

    family = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        *,
        norm: str | None = None,
    ) -> None:
        if nonlinearity not in _ACTIVATIONS:
            raise ValueError(f"nonlinearity must be one of {sorted(_ACTIVATIONS)}, got {nonlinearity!r}")
        check_norm(norm, (None, "layer"))
        super().__init__(input_size, hidden_size, bias)
        self.nonlinearity, self.norm = nonlinearity, norm
        self.act = _ACTIVATIONS[nonlinearity]

    def param_specs(self) -> list[ParamSpec]:
        H = self.hidden_size
        specs = [ParamSpec("weight_ih", (H, self.input_size)), ParamSpec("weight_hh", (H, H))]
        if self.bias:
            specs += [ParamSpec("bias_ih", (H,)), ParamSpec("bias_hh", (H,))]
        if self.norm == "layer":
            specs += norm_specs("layer", "ih", H, True) + norm_specs("layer", "hh", H, True)
        return specs

    def project_input(self, p: Params, x: Tensor) -> Tensor:
        b = p["bias_ih"] + p["bias_hh"] if self.bias else None
        if self.norm is None:
            return linear(x, p["weight_ih"], b)
        a = layer_norm(p, "ih", x @ p["weight_ih"].t())
        return a if b is None else a + b

    def step(self, p: Params, xp: Tensor, state: State, ctx: StepContext) -> State:
        (h,) = state
        hd = ctx.drop_recurrent(h)
        if self.norm is None:
            return (self.act(torch.addmm(xp, hd, p["weight_hh"].t())),)
        return (self.act(xp + layer_norm(p, "hh", hd @ p["weight_hh"].t())),)

    def torch_mode(self) -> str | None:
        if self.norm is not None:
            return None
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"

    def describe(self) -> str:
        return f"norm={self.norm!r}" if self.norm else ""
