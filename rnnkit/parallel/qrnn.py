"""QRNN (Bradbury et al. 2017, "Quasi-Recurrent Neural Networks", arXiv:1611.01576).

A causal convolution over time of width ``window`` (1 or 2) gives the gates, then
fo-pooling::

    Z = tanh(W_z ∗ X),  F = σ(W_f ∗ X),  O = σ(W_o ∗ X)      (W ∗ X: x_{t−1}, x_t -> step t)
    c_t = f_t ⊙ c_{t−1} + (1 − f_t) ⊙ z_t,   h_t = o_t ⊙ c_t

Zoneout on F, as in the paper: ``F = 1 − dropout(1 − σ(W_f ∗ X))`` — in training each
``f_t`` is set to 1 (the cell keeps its state) with probability ``zoneout``, without the
``1/(1−p)`` rescaling, as in the authors' code (a rescaled ``f`` could leave ``[0, 1]``). As
the rescaling is left out, evaluation uses the expectation ``f = p + (1 − p) σ(W_f ∗ X)``
(the authors' ``F *= 1 - zoneout`` on their ``1 − f``), i.e. Krueger et al.'s zoneout of
``c``: ``c_t = p c_{t−1} + (1 − p) c̃_t``.

The recurrent state is ``c`` — ``h_0`` and ``h_n`` hold ``c`` — and the output is ``h``. The
reverse direction of a bidirectional layer convolves with ``x_{t+1}`` (its own past). With
``window=2`` a whole-sequence call starts from ``x_{−1} = 0``; :meth:`QRNN.step` keeps the
previous input of every layer in its state: ``(c, (x_prev_0, ..., x_prev_{L−1}))``.
Parameters: ``weight_ih_l{k} (3H, window·H_in)`` (rows ``z, f, o``; column blocks
``x_{t−1}, x_t``), ``bias_ih_l{k} (3H,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks
from ..cells.base import linear
from .base import ParallelRecurrent, Params, uniform_


class QRNN(ParallelRecurrent):
    """QRNN layer stack with fo-pooling; ``forward(input, c0=None) -> (output, c_n)``.

    Args: as :class:`torch.nn.GRU`, plus keyword-only ``window`` (1 or 2) and ``zoneout``.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, window: int = 2, zoneout: float = 0.0) -> None:  # fmt: skip
        if window not in (1, 2):
            raise ValueError(f"window must be 1 or 2, got {window!r}")
        if isinstance(zoneout, bool) or not isinstance(zoneout, (int, float)) or not 0 <= zoneout < 1:
            raise ValueError(f"zoneout must be a number in [0, 1), got {zoneout!r}")
        self.window, self.zoneout = window, float(zoneout)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype)  # fmt: skip

    def param_shapes(self, n_in: int) -> dict[str, tuple[int, ...]]:
        G = 3 * self.hidden_size
        return {"weight_ih": (G, self.window * n_in), **({"bias_ih": (G,)} if self.bias else {})}

    def init_params(self, p: Params, n_in: int) -> None:
        for t in p.values():
            uniform_(t, self.hidden_size)

    def gates(self, p: Params, xs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``z, f, o`` from the window inputs ``xs (..., window·I)`` (zoneout applied to f)."""
        flat = xs.reshape(-1, xs.shape[-1])
        u = linear(flat, p["weight_ih"], p.get("bias_ih")).view(*xs.shape[:-1], -1)
        z, f, o = u.chunk(3, -1)
        f = torch.sigmoid(f)
        if self.zoneout and self.training:
            keep = torch.rand_like(f) < self.zoneout
            f = torch.where(keep, torch.ones((), dtype=f.dtype, device=f.device), f)
        elif self.zoneout:
            # the training masks are not rescaled, so evaluation takes their expectation
            # E[f] = p + (1 - p) f (else train and eval see different forget gates)
            f = torch.lerp(f, torch.ones((), dtype=f.dtype, device=f.device), self.zoneout)
        return torch.tanh(z), f, torch.sigmoid(o)

    def run(self, p: Params, x: Tensor, h0: Tensor | None, mask: Tensor | None, reverse: bool):
        if self.window == 2:  # [x_{t−1}, x_t] (x_{t+1} for the reverse direction), zero at the start
            zero = torch.zeros_like(x[:1])
            prev = torch.cat([x[1:], zero]) if reverse else torch.cat([zero, x[:-1]])
            x = torch.cat([prev, x], -1)
        z, f, o = self.gates(p, x)
        c, c_n = self.scan(f, torch.addcmul(z, f, z, value=-1), h0, mask, reverse)  # (1 − f) z
        return o * c, c_n

    def step_layer(self, p: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        z, f, o = self.gates(p, x)
        c = torch.addcmul(torch.addcmul(z, f, z, value=-1), f, s)
        return o * c, c

    def step(self, input: Tensor, state=None):
        """One step; ``state`` is ``c`` ``(num_layers, N, H)`` for ``window=1`` and
        ``(c, (x_prev_0, ..., x_prev_{L−1}))`` for ``window=2`` (zeros when ``None``)."""
        if self.window == 1:
            return super().step(input, state)
        x, unbatched = self._check_step_input(input)
        batch = None if unbatched else x.shape[0]
        c, prevs = (None, None) if state is None else self._split_state(state, batch)
        cs, new_prevs = [], []
        for k in range(self.num_layers):
            ck = c[k] if c is not None else x.new_zeros(x.shape[0], self.hidden_size)
            xp = prevs[k] if prevs is not None else torch.zeros_like(x)
            new_prevs.append(x)
            x, ck = self.step_layer(self.layer_params(k), torch.cat([xp, x], -1), ck)
            cs.append(ck)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        c_out = torch.stack(cs)
        if unbatched:
            return x.squeeze(0), (c_out.squeeze(1), tuple(p.squeeze(0) for p in new_prevs))
        return x, (c_out, tuple(new_prevs))

    def _split_state(self, state, batch: int | None):
        """``(c, prevs)`` checked against the input's batch (``None``: unbatched), batched."""
        if not isinstance(state, (tuple, list)) or len(state) != 2 or len(state[1]) != self.num_layers:
            _checks.fail(
                f"QRNN(window=2).step state must be (c, (x_prev_0, ..., x_prev_{self.num_layers - 1})), "
                f"got {type(state).__name__}"
            )
        c, prevs = state
        c = self._initial_state(c, batch)
        for k, p in enumerate(prevs):
            n_in = self.input_size if k == 0 else self.hidden_size
            _checks.check_state(p, ("x_prev",), [(n_in,) if batch is None else (batch, n_in)], self._ref)
        return c, [p.unsqueeze(0) if batch is None else p for p in prevs]

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", window={self.window}"
        return s + (f", zoneout={self.zoneout}" if self.zoneout else "")
