"""Long short-term memory (Hochreiter & Schmidhuber 1997; forget gate: Gers et al. 2000) and
its textbook variants.

The classic step, gate order and parameter names as torch (``i, f, g, o``)::

    i_t = σ(W_ii x_t + b_ii + W_hi h_{t-1} + b_hi)
    f_t = σ(W_if x_t + b_if + W_hf h_{t-1} + b_hf)
    g_t = tanh(W_ig x_t + b_ig + W_hg h_{t-1} + b_hg)
    o_t = σ(W_io x_t + b_io + W_ho h_{t-1} + b_ho)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)            (then h_t = W_hr h_t when proj_size > 0)

Shapes: ``weight_ih (4H, I)``, ``weight_hh (4H, P)``, ``bias_ih/bias_hh (4H,)``,
``weight_hr (P, H)``; state ``(h (B, P), c (B, H))`` with ``P = proj_size or H``.

Options (keywords of :class:`LSTMCellMath`, of ``rnnkit.LSTM`` and ``rnnkit.LSTMCell``):

* ``peephole=True`` — Gers & Schmidhuber (2000), "Recurrent nets that time and count":
  ``i_t, f_t`` get ``+ p_i ⊙ c_{t-1}``, ``p_f ⊙ c_{t-1}`` and ``o_t`` gets ``+ p_o ⊙ c_t``
  inside the sigmoid. ``weight_peephole (3H,)`` in the order ``i, f, o`` (only the gates
  that exist), initialized to zero.
* ``norm='layer'`` — Ba et al. (2016) eq. 20–22::

      (i, f, g, o) = LN(W_ih x_t; γ_ih, β_ih) + LN(W_hh h_{t-1}; γ_hh, β_hh) + b_ih + b_hh
      h_t = o_t ⊙ tanh(LN(c_t; γ_c, β_c))       (c_t itself is carried unnormalized)

  ``weight_ln_ih/bias_ln_ih (G,)``, ``weight_ln_hh/bias_ln_hh (G,)``, ``weight_ln_c/bias_ln_c
  (H,)``; gains init 1, shifts 0. ``G`` is the number of gate rows (4H for the classic cell).
* ``norm='batch'`` — Cooijmans et al. (2016), recurrent batch normalization: the same three
  places with batch norm, statistics per time step up to ``max_len`` (default 512), gains
  ``weight_bn_ih/hh (G,)``, ``weight_bn_c (H,)`` init 0.1, a shift ``bias_bn_c (H,)`` only for
  ``c_t`` (the paper sets β_x = β_h = 0: the gate biases already shift), and buffers
  ``running_mean_*/running_var_* (max_len, ·)``. See :mod:`rnnkit.cells.norm`. ``max_len``
  without ``norm='batch'`` is an error.
* ``forget_bias=1.0`` — added to the forget-gate rows of ``bias_ih`` at initialization
  (Jozefowicz et al. 2015; Keras' ``unit_forget_bias``). Init only: the math is torch's.
* The ablations of Greff et al. (2017), "LSTM: A Search Space Odyssey" — see
  :mod:`rnnkit.cells.greff` for their equations: ``input_gate=False`` (NIG),
  ``forget_gate=False`` (NFG), ``output_gate=False`` (NOG), ``input_activation=False``
  (NIAF), ``output_activation=False`` (NOAF), ``coupled_gates=True`` (CIFG),
  ``full_gate_recurrence=True`` (FGR). A removed gate's rows do not exist: the gate vector
  holds the present gates in the order ``i, f, g, o``. Greff's *vanilla* LSTM is
  ``peephole=True``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import Tensor

from .. import _checks
from . import greff
from .base import Cell, Params, ParamSpec, State, StepContext, linear
from .norm import batch_norm, check_norm, layer_norm, norm_specs, step_slots

_DEFAULTS = {
    "peephole": False,
    "norm": None,
    "forget_bias": 0.0,
    "max_len": 512,
    "input_gate": True,
    "forget_gate": True,
    "output_gate": True,
    "input_activation": True,
    "output_activation": True,
    "coupled_gates": False,
    "full_gate_recurrence": False,
}


class LSTMCellMath(Cell):
    """The LSTM step: torch's by default, any combination of the options above otherwise."""

    family = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        proj_size: int = 0,
        *,
        peephole: bool = False,
        norm: str | None = None,
        forget_bias: float = 0.0,
        max_len: int | None = None,
        input_gate: bool = True,
        forget_gate: bool = True,
        output_gate: bool = True,
        input_activation: bool = True,
        output_activation: bool = True,
        coupled_gates: bool = False,
        full_gate_recurrence: bool = False,
    ) -> None:
        super().__init__(input_size, hidden_size, bias)
        check_norm(norm)
        if max_len is not None and norm != "batch":  # an unused argument is a mistake, not a no-op
            raise ValueError(
                f"max_len={max_len!r} (the time steps with their own batch-norm statistics) needs "
                f"norm='batch', got norm={norm!r}"
            )
        options = {
            "peephole": peephole,
            "norm": norm,
            "forget_bias": forget_bias,
            "max_len": max_len,
            "input_gate": input_gate,
            "forget_gate": forget_gate,
            "output_gate": output_gate,
            "input_activation": input_activation,
            "output_activation": output_activation,
            "coupled_gates": coupled_gates,
            "full_gate_recurrence": full_gate_recurrence,
        }
        for k, v in options.items():
            if isinstance(_DEFAULTS[k], bool) and not isinstance(v, bool):
                raise ValueError(f"{k} must be a bool, got {v!r}")
        if not _checks.is_real(forget_bias):
            raise ValueError(f"forget_bias must be a number, got {forget_bias!r}")
        if not math.isfinite(forget_bias):  # NaN: every output NaN; inf: a saturated gate
            raise ValueError(f"forget_bias must be a finite number, got {forget_bias!r}")
        if max_len is None:  # stays None without batch norm (a cell is rebuilt from its options)
            max_len = _DEFAULTS["max_len"] if norm == "batch" else None
        elif not _checks.is_int(max_len) or max_len < 1:
            raise ValueError(f"max_len must be a positive int, got {max_len!r}")
        else:
            max_len = int(max_len)  # numpy's integers too, kept as int
        self.proj_size = int(proj_size)
        self.norm, self.forget_bias, self.max_len = norm, float(forget_bias), max_len
        self.layout = greff.GateLayout(
            input_gate, forget_gate, output_gate, coupled_gates, full_gate_recurrence, peephole
        )
        self.peephole = peephole
        self.input_activation, self.output_activation = input_activation, output_activation
        if self.forget_bias and not (bias and forget_gate):
            raise ValueError(
                f"forget_bias={forget_bias} needs bias=True and a forget gate "
                f"(got bias={bias}, forget_gate={forget_gate})"
            )
        self.state_names = ("h", "c", "gates") if full_gate_recurrence else ("h", "c")
        options["forget_bias"], options["max_len"] = self.forget_bias, max_len
        self._options = options
        # Exactly torch's math (forget_bias only changes the initialization; max_len is unused).
        self.plain = all(options[k] == d for k, d in _DEFAULTS.items() if k not in ("forget_bias", "max_len"))

    # -- parameters ------------------------------------------------------------------
    def param_specs(self) -> list[ParamSpec]:
        H, P, G = self.hidden_size, self.proj_size or self.hidden_size, self.layout.rows(self.hidden_size)
        specs = [ParamSpec("weight_ih", (G, self.input_size)), ParamSpec("weight_hh", (G, P))]
        if self.bias:
            specs += [ParamSpec("bias_ih", (G,)), ParamSpec("bias_hh", (G,))]
        if self.proj_size:
            specs.append(ParamSpec("weight_hr", (self.proj_size, H)))
        # Options' parameters come after torch's so a default layer draws the RNG as torch.
        specs += self.layout.extra_specs(H)
        if self.norm is not None:
            shift = self.norm == "layer"
            specs += norm_specs(self.norm, "ih", G, shift, self.max_len)
            specs += norm_specs(self.norm, "hh", G, shift, self.max_len)
            specs += norm_specs(self.norm, "c", H, True, self.max_len)
        return specs

    def after_reset(self, params) -> None:
        if self.forget_bias:
            f = self.layout.gates.index("f") * self.hidden_size
            with torch.no_grad():
                params["bias_ih"][f : f + self.hidden_size] += self.forget_bias

    def state_sizes(self) -> tuple[int, ...]:
        sizes = (self.proj_size or self.hidden_size, self.hidden_size)
        if self.layout.full_recurrence:
            return (*sizes, len(self.layout.sigmoid_gates) * self.hidden_size)
        return sizes

    # -- math ------------------------------------------------------------------------
    def _bias(self, p: Params) -> Tensor | None:
        return p["bias_ih"] + p["bias_hh"] if self.bias else None

    def project_input(self, p: Params, x: Tensor) -> Tensor:
        if self.norm is None:  # both biases are constant over time: fold them into the GEMM
            return linear(x, p["weight_ih"], self._bias(p))
        a = x @ p["weight_ih"].t()
        if self.norm == "batch":  # needs the time step: normalized in step()
            return a
        a = layer_norm(p, "ih", a)
        b = self._bias(p)
        return a if b is None else a + b

    def step(self, p: Params, xp: Tensor, state: State, ctx: StepContext) -> State:
        h, c = state[0], state[1]
        hd = ctx.drop_recurrent(h)
        if self.plain:  # torch's LSTM: one GEMM, four chunks
            gates = torch.addmm(xp, hd, p["weight_hh"].t())
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            return (h @ p["weight_hr"].t() if self.proj_size else h), c
        a, slots = self._preactivations(p, xp, hd, ctx)
        prev = state[2] if self.layout.full_recurrence else None
        c, o, acts = self.layout.cell_update(p, a, c, prev, self._act_in())
        if self.norm == "layer":
            cn = layer_norm(p, "c", c)
        elif self.norm == "batch":
            cn = batch_norm(p, "c", c, slots, ctx.training)  # type: ignore[arg-type]
        else:
            cn = c
        y = torch.tanh(cn) if self.output_activation else cn
        h = y if o is None else o * y
        if self.proj_size:
            h = h @ p["weight_hr"].t()
        return (h, c, acts) if prev is not None else (h, c)

    def _act_in(self) -> Callable[[Tensor], Tensor] | None:
        return torch.tanh if self.input_activation else None

    def _preactivations(
        self, p: Params, xp: Tensor, hd: Tensor, ctx: StepContext, update: bool = True
    ) -> tuple[Tensor, int | Tensor | None]:
        """Gate pre-activations ``(B, rows)`` from ``xp`` and the (dropped-out) ``h_{t-1}``, and the
        batch-norm slots of the step (``None`` without batch norm; ``update=False`` leaves the
        running statistics alone)."""
        if self.norm is None:
            return torch.addmm(xp, hd, p["weight_hh"].t()), None
        if self.norm == "layer":
            return xp + layer_norm(p, "hh", hd @ p["weight_hh"].t()), None
        # the buffers' own length, not self.max_len: a layer call starting at a later time
        # step passes views from its first slot on (norm.shift_slots)
        slots = step_slots(ctx, hd.shape[0], p["running_mean_c"].shape[0])
        a = batch_norm(p, "ih", xp, slots, ctx.training, update)
        a = a + batch_norm(p, "hh", hd @ p["weight_hh"].t(), slots, ctx.training, update)
        return (a + self._bias(p) if self.bias else a), slots

    def gates(self, p: Params, xp: Tensor, state: State, ctx: StepContext | None = None) -> dict[str, Tensor]:
        """The gate values of one step, for :func:`rnnkit.diagnostics.activity`.

        ``xp (B, G)`` one step of :meth:`project_input`, ``state`` the state before the step;
        returns ``(B, H)`` tensors keyed ``i, f, g, o`` (torch's names) for the gates that
        exist: CIFG's ``i`` is ``1 - f``, and ``g`` is the candidate as the step adds it
        (without tanh for ``input_activation=False``). ``ctx`` as :meth:`step`'s (default:
        step 0, evaluation); batch norm uses the step's statistics (the batch's in training,
        ``ctx.extra["step"]``'s running ones in evaluation) and does not update them, and
        ``ctx`` is left as it was."""
        ctx = StepContext() if ctx is None else dataclasses.replace(ctx, extra=dict(ctx.extra))
        a, _ = self._preactivations(p, xp, ctx.drop_recurrent(state[0]), ctx, update=False)
        prev = state[2] if self.layout.full_recurrence else None
        return self.layout.activations(p, a, state[1], prev, self._act_in())[0]

    def torch_mode(self) -> str | None:
        return "LSTM" if self.plain else None

    def describe(self) -> str:
        shown = {k: v for k, v in self._options.items() if v != _DEFAULTS[k]}
        if self.norm != "batch":
            shown.pop("max_len", None)
        return ", ".join(f"{k}={v!r}" for k, v in shown.items())
