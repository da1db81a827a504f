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

The output is ``h``. The recurrent state holds ``c`` and, with ``window=2``, the convolution's
past, as :class:`rnnkit.baselines.ConvRecurrent` and ``TCN`` carry theirs: ``h_0``/``h_n`` are

* ``window=1``: ``c`` ``(D·num_layers, N, H)``, as a GRU's ``h``;
* ``window=2``: ``(c, (x_prev_0, ..., x_prev_{L−1}))``, ``x_prev_k`` ``(N, H_in_k)`` the last
  input of layer ``k`` (``H_in_0 = input_size``, then ``D·hidden_size``) — for a padded
  (``lengths=``) or packed batch each sequence's input at its own last step. ``forward`` and
  :meth:`QRNN.step` take and return this same state, so a sequence fed in pieces (one step at
  a time, TBPTT windows) with the state carried gives the whole-sequence call's numbers.
  ``x_prev_k`` is ``x_{−1}`` of layer ``k``'s first step; a plain tensor ``c`` (the state
  before it held ``x_prev``) or ``None`` mean ``x_{−1} = 0``. Unbatched: no ``N`` dimension.

The reverse direction of a bidirectional layer convolves with ``x_{t+1}`` (its own past) and
starts from ``x_T = 0``, its future being unknown; ``x_prev`` feeds the forward direction
only. As for any bidirectional RNN, continuing a bidirectional layer across calls does not
give the whole-sequence numbers (its ``h_n`` has the same structure all the same).
Parameters: ``weight_ih_l{k} (3H, window·H_in)`` (rows ``z, f, o``; column blocks
``x_{t−1}, x_t``), ``bias_ih_l{k} (3H,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _checks, options, regularizers
from ..cells.base import linear
from .base import ParallelRecurrent, Params, join_autocast, uniform_


class QRNN(ParallelRecurrent):
    """QRNN layer stack with fo-pooling; ``forward(input, hx=None, lengths=None) -> (output, h_n)``.

    ``h_0``/``h_n``: ``c`` for ``window=1``; ``(c, (x_prev_0, ..., x_prev_{L−1}))`` for
    ``window=2`` (each layer's last input: the convolution's past), which ``forward`` always
    returns and :meth:`step` shares; see the module docstring.

    Args: as :class:`torch.nn.GRU`, plus keyword-only ``window`` (1 or 2) and ``zoneout``.
    """

    zoneout = options.ProbOption(below_one=True)  # checked on every assignment, in [0, 1)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, window: int = 2, zoneout: float = 0.0) -> None:  # fmt: skip
        # an int: True and 2.0 compare equal to 1 and 2 (True ran as window 1, silently)
        if not _checks.is_int(window) or window not in (1, 2):
            raise ValueError(f"window must be 1 or 2, got {window!r}")
        self.window, self.zoneout = int(window), zoneout
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
        u = linear(flat, p["weight_ih"], p.get("bias_ih"))
        u = u.view(*xs.shape[:-1], u.shape[-1])  # not -1: an empty batch has no size to infer
        z, f, o = u.chunk(3, -1)
        f = torch.sigmoid(f)
        if self.zoneout and self.training:
            # 1 (keep c_{t-1}: f = 1) with probability p, drawn where every regularizer draws its
            # masks (the CPU's counter-based generator; recorded and replaced by tests there)
            keep = regularizers.sample_mask("zoneout", f.shape, self.zoneout, f)
            f = torch.where(keep != 0, torch.ones((), dtype=f.dtype, device=f.device), f)
        elif self.zoneout:
            # the training masks are not rescaled, so evaluation takes their expectation
            # E[f] = p + (1 - p) f (else train and eval see different forget gates)
            f = torch.lerp(f, torch.ones((), dtype=f.dtype, device=f.device), self.zoneout)
        return torch.tanh(z), f, torch.sigmoid(o)

    def run(self, p: Params, x: Tensor, h0: Tensor | None, mask: Tensor | None, reverse: bool,
            prev: Tensor | None = None):  # fmt: skip
        """One layer-direction; with ``window=2`` ``prev (B, I)`` is the forward direction's
        ``x_{−1}`` (zeros when ``None``); the reverse direction's ``x_T`` is always zero."""
        if self.window == 2:  # [x_{t−1}, x_t] (x_{t+1} for the reverse direction)
            zero = torch.zeros_like(x[:1])
            if reverse:
                prev_steps = torch.cat([x[1:], zero])
            else:
                first = zero if prev is None else join_autocast(prev, x).unsqueeze(0)
                prev_steps = torch.cat([first, x[:-1]])
            x = torch.cat([prev_steps, x], -1)
        z, f, o = self.gates(p, x)
        c, c_n = self.scan(f, torch.addcmul(z, f, z, value=-1), h0, mask, reverse)  # (1 − f) z
        return o * c, c_n

    def _run_layers(self, x: Tensor, state, mask: Tensor | None):
        if self.window == 1:
            return super()._run_layers(x, state, mask)
        c0, prevs = state
        D, finals, lasts = self.num_directions, [], []
        if mask is not None:  # each sequence's own last valid step, lengths − 1
            last = (mask.squeeze(-1).sum(0) - 1).clamp(min=0)
            batch = torch.arange(x.shape[1], device=x.device)
        for k in range(self.num_layers):
            # a copy: a view would keep the whole input alive with the carried state
            lasts.append(x[-1].clone() if mask is None else x[last, batch])
            outs = []
            for d in range(D):
                s0 = None if c0 is None else c0[k * D + d]
                prev = None if prevs is None or d else prevs[k]
                y, s = self.run(self.layer_params(k, d), x, s0, mask, reverse=d == 1, prev=prev)
                outs.append(y)
                finals.append(s)
            x = self._next_layer_input(outs, mask, k)
        return x, (torch.stack(finals), tuple(lasts))

    def _forward_state(self, hx, batch: int | None):
        if self.window == 1:
            return super()._forward_state(hx, batch)
        return self._split_state(hx, batch)

    def _unbatch_state(self, h_n):
        if self.window == 1:
            return super()._unbatch_state(h_n)
        c, prevs = h_n
        return c.squeeze(1), tuple(p.squeeze(0) for p in prevs)

    def step_layer(self, p: Params, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        z, f, o = self.gates(p, x)
        c = torch.addcmul(torch.addcmul(z, f, z, value=-1), f, join_autocast(s, z))  # (as forward)
        return o * c, c

    def step(self, input: Tensor, state=None):
        """One step; ``state`` is ``c`` ``(num_layers, N, H)`` for ``window=1`` and
        ``(c, (x_prev_0, ..., x_prev_{L−1}))`` for ``window=2``, the state :meth:`forward`
        takes and returns (zeros when ``None``; a plain ``c`` means ``x_prev = 0``)."""
        if self.window == 1:
            return super().step(input, state)
        x, unbatched = self._check_step_input(input)
        c, prevs = self._split_state(state, None if unbatched else x.shape[0])
        cs, new_prevs = [], []
        for k in range(self.num_layers):
            ck = c[k] if c is not None else x.new_zeros(x.shape[0], self.hidden_size)
            xp = join_autocast(prevs[k], x) if prevs is not None else torch.zeros_like(x)
            # layer 0's input is the caller's tensor (a view of it unbatched): a copy, or a buffer
            # refilled in place would become the next step's x_{t-1} (as forward's last input)
            new_prevs.append(x if k else x.clone())
            x, ck = self.step_layer(self.layer_params(k), torch.cat([xp, x], -1), ck)
            cs.append(ck)
            if self.dropout and self.training and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        c_out = torch.stack(cs)
        if unbatched:
            return x.squeeze(0), (c_out.squeeze(1), tuple(p.squeeze(0) for p in new_prevs))
        return x, (c_out, tuple(new_prevs))

    def _split_state(self, state, batch: int | None):
        """The ``window=2`` state ``None``, ``c`` or ``(c, (x_prev_0, ...))`` (either part may
        be ``None``: zeros) checked against the input's batch (``None``: unbatched) ->
        ``(c or None, [x_prev_k (B, I_k)] or None)``, batched."""
        if state is None:
            return None, None
        if isinstance(state, Tensor):
            return self._initial_state(state, batch), None
        L = self.num_layers
        ok = isinstance(state, (tuple, list)) and len(state) == 2
        if not ok or not (state[1] is None or (isinstance(state[1], (tuple, list)) and len(state[1]) == L)):
            got = _describe(state) + (f" holding {_describe(state[1])}" if ok else "")
            _checks.fail(
                f"QRNN(window=2) state must be c or (c, (x_prev_0, ..., x_prev_{L - 1})) with one "
                f"previous input per layer, got {got}"
            )
        c, prevs = state
        c = None if c is None else self._initial_state(c, batch)
        if prevs is None:
            return c, None
        out = []
        for k, p in enumerate(prevs):
            n_in = self.layer_input_size(k)
            shape = (n_in,) if batch is None else (batch, n_in)
            _checks.check_tensor(p, f"x_prev_{k}")
            if (got := tuple(p.shape)) != shape:
                _checks.fail(f"expected x_prev_{k} of shape {shape}, got {got} (layer {k}'s last input)")
            self._check_real(p, f"x_prev_{k}")
            _checks.check_like(p, self._ref, f"x_prev_{k}")
            out.append(p.unsqueeze(0) if batch is None else p)
        return c, out

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", window={self.window}"
        return s + (f", zoneout={self.zoneout}" if self.zoneout else "")


def _describe(obj) -> str:
    n = f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else ""
    return type(obj).__name__ + n
