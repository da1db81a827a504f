"""The gate structure of an LSTM step: peepholes and the ablations of Greff et al. (2017).

Greff, Srivastava, Koutník, Steunebrink & Schmidhuber, "LSTM: A Search Space Odyssey"
(IEEE TNNLS 2017) compare the *vanilla* LSTM (forget gate and peepholes, Gers &
Schmidhuber 2000) with eight variants. With ``a_k`` the pre-activation of gate ``k`` (input
and recurrent products plus biases, possibly normalized), ``p_k`` the peephole weights
(zero unless ``peephole=True``) and ``g``/``h`` the input and output activations::

    i_t = σ(a_i + p_i ⊙ c_{t-1})        f_t = σ(a_f + p_f ⊙ c_{t-1})
    z_t = g(a_g)                         c_t = f_t ⊙ c_{t-1} + i_t ⊙ z_t
    o_t = σ(a_o + p_o ⊙ c_t)             y_t = o_t ⊙ h(c_t)

The variants, as keyword options of ``rnnkit.LSTM`` (each removes what it replaces):

====  ===========================  =====================================================
NIG   ``input_gate=False``          ``i_t = 1`` (no ``i`` rows, no ``p_i``)
NFG   ``forget_gate=False``         ``f_t = 1`` (no ``f`` rows, no ``p_f``)
NOG   ``output_gate=False``         ``o_t = 1`` (no ``o`` rows, no ``p_o``)
NIAF  ``input_activation=False``    ``g(x) = x``
NOAF  ``output_activation=False``   ``h(x) = x``
CIFG  ``coupled_gates=True``        ``i_t = 1 - f_t`` (no ``i`` rows, no ``p_i``); Greff
                                    write ``f_t = 1 - i_t``: the same family, since
                                    ``1 - σ(a) = σ(-a)``; we keep the forget gate so that
                                    ``forget_bias`` applies
FGR   ``full_gate_recurrence=True``  every sigmoid gate also sees the previous activations
                                    of all sigmoid gates, as in the original LSTM of
                                    Hochreiter & Schmidhuber (1997):
                                    ``a_k += Σ_{j∈{i,f,o}} R_{kj} j_{t-1}`` (9 H×H matrices)
====  ===========================  =====================================================

FGR's matrices are one parameter ``weight_gg (S·H, S·H)`` (rows: receiving gate, columns:
sending gate, both in the order ``i, f, o`` of the ``S`` sigmoid gates present), initialized
like torch's weights. The previous activations are recurrent state: an FGR layer's state is
``(h, c, gates)`` with ``gates (B, S·H)`` (all three zeros when no state is given at all; a
given state must be the full triple: ``(h, c)`` is refused), and it returns
``(h_n, c_n, gates_n)``. Peephole weights are ``weight_peephole (S·H,)``, same order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .base import Params, ParamSpec


class GateLayout:
    """Which gates exist and how they combine into the new cell state."""

    def __init__(
        self,
        input_gate: bool,
        forget_gate: bool,
        output_gate: bool,
        coupled: bool,
        full_recurrence: bool,
        peephole: bool,
    ) -> None:
        if coupled and not (input_gate and forget_gate):
            raise ValueError(
                "coupled_gates=True (CIFG, i = 1 - f) needs both input_gate=True and "
                f"forget_gate=True, got input_gate={input_gate}, forget_gate={forget_gate}"
            )
        has = {"i": input_gate and not coupled, "f": forget_gate, "g": True, "o": output_gate}
        self.gates = [k for k in "ifgo" if has[k]]
        self.sigmoid_gates = [k for k in "ifo" if has[k]]
        self.coupled, self.input_gate = coupled, input_gate
        self.full_recurrence, self.peephole = full_recurrence, peephole
        if full_recurrence and not self.sigmoid_gates:
            raise ValueError("full_gate_recurrence=True needs at least one sigmoid gate (i, f or o)")
        if peephole and not self.sigmoid_gates:
            raise ValueError("peephole=True needs at least one sigmoid gate (i, f or o)")

    def rows(self, H: int) -> int:
        """Rows of ``weight_ih``/``weight_hh``/biases: ``H`` per present gate."""
        return len(self.gates) * H

    def extra_specs(self, H: int) -> list[ParamSpec]:
        S = len(self.sigmoid_gates) * H
        specs = []
        if self.peephole:  # zero: a fresh peephole LSTM is the classic LSTM
            specs.append(ParamSpec("weight_peephole", (S,), "zeros"))
        if self.full_recurrence:
            specs.append(ParamSpec("weight_gg", (S, S)))
        return specs

    def activations(
        self,
        p: Params,
        a: Tensor,
        c: Tensor,
        prev: Tensor | None,
        act_in: Callable[[Tensor], Tensor] | None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """The gate values the step uses and ``c_t``, from pre-activations ``a (B, rows)``.

        Gates ``(B, H)`` keyed ``i, f, g, o``: the present ones, plus CIFG's ``i = 1 - f``;
        ``g`` is the candidate ``z_t`` after the input activation (the identity for NIAF).
        """
        H = c.shape[1]
        # sizes, not split(H): split(0) gives one piece, and H = 0 is a valid (torch.nn) cell
        pre = dict(zip(self.gates, a.split([H] * len(self.gates), 1)))
        S = [H] * len(self.sigmoid_gates)
        if prev is not None:
            rec = prev @ p["weight_gg"].t()
            for k, r in zip(self.sigmoid_gates, rec.split(S, 1)):
                pre[k] = pre[k] + r
        peep = dict(zip(self.sigmoid_gates, p["weight_peephole"].split(S))) if self.peephole else {}
        out: dict[str, Tensor] = {}
        if "f" in pre:
            out["f"] = torch.sigmoid(pre["f"] + peep["f"] * c if "f" in peep else pre["f"])
        if "i" in pre:
            out["i"] = torch.sigmoid(pre["i"] + peep["i"] * c if "i" in peep else pre["i"])
        elif self.coupled:
            out["i"] = 1 - out["f"]
        z = out["g"] = pre["g"] if act_in is None else act_in(pre["g"])
        c = (out["f"] * c if "f" in out else c) + (out["i"] * z if "i" in out else z)
        if "o" in pre:  # the output gate's peephole sees the new cell state
            out["o"] = torch.sigmoid(pre["o"] + peep["o"] * c if "o" in peep else pre["o"])
        return out, c

    def cell_update(
        self,
        p: Params,
        a: Tensor,
        c: Tensor,
        prev: Tensor | None,
        act_in: Callable[[Tensor], Tensor] | None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Gates from pre-activations ``a (B, rows)``; returns ``(c_t, o_t or None, acts)``.

        ``acts`` (the sigmoid gates' activations, for FGR's next step) is None without FGR.
        """
        gates, c = self.activations(p, a, c, prev, act_in)
        acts = None
        if prev is not None:
            acts = torch.cat([gates[k] for k in self.sigmoid_gates], 1)
        return c, gates.get("o"), acts
