"""Gated recurrent unit (Cho et al. 2014) and its variants.

torch's (cuDNN) form, gate order and parameter names as torch (``r, z, n``)::

    r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z_t = σ(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}

Shapes: ``weight_ih (3H, I)``, ``weight_hh (3H, H)``, ``bias_ih/bias_hh (3H,)``; state
``(h (B, H),)``.

Options (keywords of :class:`GRUCellMath`, ``rnnkit.GRU`` and ``rnnkit.GRUCell``):

* ``reset_after=False`` — the original form of Cho et al. (2014), the reset gate applied
  *before* the recurrent product, same parameters::

      n_t = tanh(W_in x_t + b_in + W_hn (r_t ⊙ h_{t-1}) + b_hn)

* ``norm='layer'`` — Ba et al. (2016) applied to the GRU: ``W_ih x_t`` and ``W_hh h_{t-1}``
  (each a 3H gate vector) are layer-normalized separately (``weight_ln_ih/bias_ln_ih``,
  ``weight_ln_hh/bias_ln_hh``, init 1 and 0), the biases added after normalization::

      (r, z, ñ)_x = LN(W_ih x_t) + b_ih,   (r, z, ñ)_h = LN(W_hh h_{t-1}) + b_hh

  then the torch-form equations above. Not with ``reset_after=False`` (the candidate's
  recurrent product depends on ``r_t``, so ``W_hh h_{t-1}`` is not one vector to normalize).
* ``variant='mut1'|'mut2'|'mut3'`` — the three architectures found by the search of
  Jozefowicz, Zaremba & Sutskever (2015), "An Empirical Exploration of Recurrent Network
  Architectures", section 3 (there ``h_{t+1}`` is computed from ``h_t``; note ``z`` gates
  the *candidate*)::

      MUT1: z = σ(W_xz x_t + b_z)
            r = σ(W_xr x_t + W_hr h_t + b_r)
            h_{t+1} = tanh(W_hh (r ⊙ h_t) + tanh(x_t) + b_h) ⊙ z + h_t ⊙ (1 - z)
      MUT2: z = σ(W_xz x_t + W_hz h_t + b_z)
            r = σ(x_t + W_hr h_t + b_r)
            h_{t+1} = tanh(W_hh (r ⊙ h_t) + W_xh x_t + b_h) ⊙ z + h_t ⊙ (1 - z)
      MUT3: z = σ(W_xz x_t + W_hz tanh(h_t) + b_z)
            r = σ(W_xr x_t + W_hr h_t + b_r)
            h_{t+1} = tanh(W_hh (r ⊙ h_t) + W_xh x_t + b_h) ⊙ z + h_t ⊙ (1 - z)

  Parameters keep torch's names, holding only the blocks that exist, in the order
  ``r, z, n``: MUT1 ``weight_ih (2H, I)`` [r, z], ``weight_hh (2H, H)`` [r, n]; MUT2
  ``weight_ih (2H, I)`` [z, n], ``weight_hh (3H, H)``; MUT3 ``(3H, I)``, ``(3H, H)``. Biases as
  torch's pair: ``bias_ih (3H,)`` (``b_r, b_z, b_h``) and ``bias_hh`` over the ``weight_hh``
  blocks. Where ``x_t`` enters a hidden-size sum directly (MUT1's ``tanh(x_t)``, MUT2's
  ``r``) and ``input_size != hidden_size``, ``x_t`` is replaced by a learned projection
  ``weight_xproj (H, I)`` (no bias). ``reset_after`` defaults to the paper's ``False`` here;
  ``reset_after=True`` uses ``r ⊙ (W_hh h_t + b_hn)`` instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Cell, Params, ParamSpec, State, StepContext, linear
from .norm import check_norm, layer_norm, norm_specs

VARIANTS = (None, "mut1", "mut2", "mut3")
_INPUT_BLOCKS = {None: "rzn", "mut1": "rz", "mut2": "zn", "mut3": "rzn"}
_HIDDEN_BLOCKS = {None: "rzn", "mut1": "rn", "mut2": "rzn", "mut3": "rzn"}


class GRUCellMath(Cell):
    """The GRU step: torch's by default (reset gate after ``W_hn``), or one of the options."""

    family = "gru"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        reset_after: bool | None = None,
        norm: str | None = None,
        variant: str | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias)
        check_norm(norm, (None, "layer"))
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if reset_after is not None and not isinstance(reset_after, bool):
            raise ValueError(f"reset_after must be a bool, got {reset_after!r}")
        if norm is not None and variant is not None:
            raise ValueError(f"norm={norm!r} is defined for the standard GRU only, got variant={variant!r}")
        if norm is not None and reset_after is False:
            raise ValueError(
                "norm='layer' needs reset_after=True: with reset_after=False the candidate's "
                "recurrent product W_hn (r ⊙ h) depends on r_t, so W_hh h_{t-1} is not one vector"
            )
        self.variant, self.norm = variant, norm
        self.reset_after = (variant is None) if reset_after is None else reset_after
        self.inp, self.hid = _INPUT_BLOCKS[variant], _HIDDEN_BLOCKS[variant]
        # x_t enters a hidden-size sum directly: identity if sizes agree, else a projection.
        self.xproj = variant in ("mut1", "mut2") and input_size != hidden_size

    def param_specs(self) -> list[ParamSpec]:
        H = self.hidden_size
        specs = [
            ParamSpec("weight_ih", (len(self.inp) * H, self.input_size)),
            ParamSpec("weight_hh", (len(self.hid) * H, H)),
        ]
        if self.bias:
            specs += [ParamSpec("bias_ih", (3 * H,)), ParamSpec("bias_hh", (len(self.hid) * H,))]
        if self.xproj:
            specs.append(ParamSpec("weight_xproj", (H, self.input_size)))
        if self.norm == "layer":
            specs += norm_specs("layer", "ih", 3 * H, True) + norm_specs("layer", "hh", 3 * H, True)
        return specs

    def project_input(self, p: Params, x: Tensor) -> Tensor:
        """``(N, 3H)``: the input's contribution to ``r, z, n`` (bias ``b_i·`` included)."""
        if self.variant is None:
            if self.norm is None:
                return linear(x, p["weight_ih"], p.get("bias_ih"))
            a = layer_norm(p, "ih", x @ p["weight_ih"].t())
            return a + p["bias_ih"] if self.bias else a
        H = self.hidden_size
        # sizes, not split(H): split(0) gives one piece, and H = 0 is a valid (torch.nn) cell
        blocks = dict(zip(self.inp, (x @ p["weight_ih"].t()).split([H] * len(self.inp), 1)))
        xh = x @ p["weight_xproj"].t() if self.xproj else x
        if self.variant == "mut1":
            blocks["n"] = torch.tanh(xh)
        elif self.variant == "mut2":
            blocks["r"] = xh
        a = torch.cat([blocks["r"], blocks["z"], blocks["n"]], 1)
        return a + p["bias_ih"] if self.bias else a

    def _hidden(self, p: Params, gates: str, h: Tensor) -> Tensor:
        """``W_h· h + b_h·`` for the hidden blocks ``gates`` (contiguous rows of weight_hh)."""
        H, k = self.hidden_size, self.hid.index(gates[0])
        rows = slice(k * H, (k + len(gates)) * H)
        b = p["bias_hh"][rows] if self.bias else None
        return linear(h, p["weight_hh"][rows], b)

    def step(self, p: Params, xp: Tensor, state: State, ctx: StepContext) -> State:
        (h,) = state
        r, z, n = self._rzn(p, xp, ctx.drop_recurrent(h))
        if self.variant is None:
            # (1 - z) n + z h as torch's GRUCell computes it (and the fused kernels), not
            # lerp(n, h, z): NaN for an infinite h at z = 1, where torch.nn.GRU keeps the inf
            return ((h - n) * z + n,)
        # the paper's z gates the candidate: n z + h (1 - z) as written (and the fused kernels),
        # not lerp(h, n, z) (NaN for an infinite h at z < 1/2) nor (n - h) z + h (at every z)
        return (n * z + h * (1 - z),)

    def gates(self, p: Params, xp: Tensor, state: State, ctx: StepContext | None = None) -> dict[str, Tensor]:
        """The gate values of one step, for :func:`rnnkit.diagnostics.activity`: ``r, z, n``,
        each ``(B, H)``, from ``xp (B, 3H)`` (one step of :meth:`project_input`) and the state
        before the step (``ctx``: its recurrent dropout mask, if any). For MUT1-3 ``z`` is the
        paper's, which gates the candidate: ``h_t = z ⊙ n + (1 - z) ⊙ h_{t-1}``."""
        ctx = StepContext() if ctx is None else ctx
        return dict(zip("rzn", self._rzn(p, xp, ctx.drop_recurrent(state[0]))))

    def _rzn(self, p: Params, xp: Tensor, hd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reset gate, update gate and candidate ``(B, H)`` from ``xp`` and the (dropped-out) ``h_{t-1}``."""
        H = self.hidden_size
        xr, xz, xn = xp[:, :H], xp[:, H : 2 * H], xp[:, 2 * H :]
        if self.variant is None:
            if self.reset_after:
                if self.norm is None:
                    hh = linear(hd, p["weight_hh"], p.get("bias_hh"))
                else:
                    hh = layer_norm(p, "hh", hd @ p["weight_hh"].t())
                    hh = hh + p["bias_hh"] if self.bias else hh
                rz = torch.sigmoid(xp[:, : 2 * H] + hh[:, : 2 * H])
                r, z = rz[:, :H], rz[:, H:]
                return r, z, torch.tanh(xn + r * hh[:, 2 * H :])
            rz = torch.sigmoid(xp[:, : 2 * H] + self._hidden(p, "rz", hd))
            r, z = rz[:, :H], rz[:, H:]
            return r, z, torch.tanh(xn + self._hidden(p, "n", r * hd))
        if self.variant == "mut1":
            z = torch.sigmoid(xz)
            r = torch.sigmoid(xr + self._hidden(p, "r", hd))
        elif self.variant == "mut2":
            rz = self._hidden(p, "rz", hd)
            r, z = torch.sigmoid(xr + rz[:, :H]), torch.sigmoid(xz + rz[:, H:])
        else:
            r = torch.sigmoid(xr + self._hidden(p, "r", hd))
            z = torch.sigmoid(xz + self._hidden(p, "z", torch.tanh(hd)))
        if self.reset_after:
            return r, z, torch.tanh(xn + r * self._hidden(p, "n", hd))
        return r, z, torch.tanh(xn + self._hidden(p, "n", r * hd))

    def torch_mode(self) -> str | None:
        return "GRU" if self.variant is None and self.norm is None and self.reset_after else None

    def describe(self) -> str:
        opts = [("variant", self.variant, None), ("norm", self.norm, None)]
        opts.append(("reset_after", self.reset_after, self.variant is None))  # vs the family's own
        return ", ".join(f"{k}={v!r}" for k, v, d in opts if v != d)
