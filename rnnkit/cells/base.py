"""The cell protocol: the math of one time step, separate from the loop over time.

A *cell* is a plain object (not an ``nn.Module``) that knows

* which parameters one layer-direction of it owns (:meth:`Cell.param_specs`), by their
  *base* names — ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, ``weight_hr`` —
  in ``torch.nn``'s order and gate layout;
* the layout of its recurrent state (:meth:`Cell.state_sizes`): ``(h,)`` for RNN/GRU,
  ``(h, c)`` for LSTM; ``state[0]`` is always the output of the step;
* the time-parallel part of the step (:meth:`Cell.project_input`), run once for all time
  steps as one GEMM, and the sequential part (:meth:`Cell.step`).

Modules own the parameters. A stacked layer registers them under torch's names
(``weight_ih_l0``, ``bias_hh_l1_reverse`` ...) and hands the cell a ``dict`` keyed by base
name; a single-step ``*Cell`` module registers them under the base names themselves. One
loop (:mod:`rnnkit.layers`) runs every cell, so a new variant is a new cell, never a new
time loop. This mirrors Flax's split between a cell and the scan that drives it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import _checks

Params = Mapping[str, Tensor]
State = tuple[Tensor, ...]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter (or buffer) of a cell.

    ``init`` is ``"uniform"`` (torch's U(-1/sqrt(H), 1/sqrt(H))), ``"zeros"``, ``"ones"``,
    a float constant, or a callable taking the tensor and filling it in place.
    """

    name: str
    shape: tuple[int, ...]
    init: str | float | Callable[[Tensor], object] = "uniform"
    buffer: bool = False


@dataclass
class StepContext:
    """What a step may need beyond its inputs: the time index and the mode.

    ``recurrent_mask`` (``(batch, hidden)`` or ``None``) is applied by cells to ``h_{t-1}``
    right before the recurrent product (variational recurrent dropout).
    """

    t: int = 0
    training: bool = False
    recurrent_mask: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def drop_recurrent(self, h: Tensor) -> Tensor:
        """``h ⊙ mask`` for the rows of ``h`` (sliced to the active batch), else ``h``."""
        m = self.recurrent_mask
        return h if m is None else h * m[: h.shape[0]]


class Cell:
    """Base class of every cell. Subclasses set ``family`` and implement the math.

    Shapes: ``x`` is ``(N, input_size)`` for any number of rows ``N`` (all time steps of a
    batch at once); ``xp`` is one time step of :meth:`project_input`'s result, ``(B, G)``;
    every state tensor is ``(B, state_sizes()[i])``.
    """

    family: str = "cell"
    state_names: tuple[str, ...] = ("h",)

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        # else torch.empty fails on the parameter shapes ('negative dimension -16' for 4 gates x -4);
        # zero is allowed, as torch.nn's cells allow it (the layers require sizes >= 1 beforehand)
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not _checks.is_int(v):
                raise TypeError(f"{name} should be of type int, got: {type(v).__name__}")
            if v < 0:
                raise ValueError(f"{name} must be a non-negative int, got {v!r}")
        if not isinstance(bias, bool):  # as the layers': bias='no' (true) built biases, silently
            raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
        # numpy's integers as int: they make the specs' shapes, which errors name
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.bias = bias

    # -- parameters ------------------------------------------------------------------
    def param_specs(self) -> list[ParamSpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    def reset_parameters(self, params: Mapping[str, Tensor]) -> None:
        """Initialize in spec order, consuming torch's RNG exactly as ``torch.nn`` does."""
        with torch.no_grad():
            for spec in self.param_specs():
                self.init_tensor(spec, params[spec.name])
        self.after_reset(params)

    def init_tensor(self, spec: ParamSpec, t: Tensor) -> None:
        """Fill ``t`` (the tensor of ``spec``, or one that holds it: a parametrization's original)
        in place with ``spec.init``."""
        std = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0  # torch.nn's cells allow 0
        with torch.no_grad():
            if spec.init == "uniform":
                t.uniform_(-std, std)
            elif spec.init == "zeros":
                t.zero_()
            elif spec.init == "ones":
                t.fill_(1.0)
            elif isinstance(spec.init, (int, float)):
                t.fill_(float(spec.init))
            else:
                spec.init(t)

    def after_reset(self, params: Mapping[str, Tensor]) -> None:
        """What the cell changes once every tensor is drawn (nothing; the LSTM's forget bias)."""

    # -- state -----------------------------------------------------------------------
    def state_sizes(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    @property
    def output_size(self) -> int:
        return self.state_sizes()[0]

    # -- math ------------------------------------------------------------------------
    def project_input(self, p: Params, x: Tensor) -> Tensor:
        """Time-parallel part of the step for all rows at once: ``(N, I) -> (N, G)``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def step(self, p: Params, xp: Tensor, state: State, ctx: StepContext) -> State:
        """One time step: projected input ``(B, G)`` and state -> new state."""
        raise NotImplementedError  # pragma: no cover - abstract

    def torch_mode(self) -> str | None:
        """``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"`` when this cell is exactly
        torch's, so that the layer may run on torch's own fused kernels; else ``None``."""
        return None

    def describe(self) -> str:
        """Extra options for ``repr``; empty for the standard cell."""
        return ""


def linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``x @ w.T + b`` as one fused GEMM (``addmm``) when ``x`` is 2-D."""
    if b is None:
        return x @ w.t()
    if x.dim() == 2:
        return torch.addmm(b, x, w.t())
    return torch.nn.functional.linear(x, w, b)
