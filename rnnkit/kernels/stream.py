"""Streaming inference: one time step at a time, the state kept by the caller.

``Stream(layer)`` wraps a unidirectional :class:`rnnkit.RecurrentStack` (``rnnkit.LSTM``
& co.) for online use: ``y_t, state = stream.step(x_t, state)``. For the standard cells each
layer is one call of torch's fused cell kernel (``_VF.lstm_cell`` & co., what
``torch.nn.LSTMCell`` runs), so a step costs about one bare cell call per layer; other cells
run their own :meth:`Cell.step`. Stepping through a sequence gives exactly the layer's
output on the whole sequence in ``eval()`` (evaluation semantics: dropout and dropout-type
regularizers are off, zoneout uses its expectation ``lerp(s̃_t, s_{t-1}, p)``, batch norm its
running statistics, which a step never updates). A layer in training mode with any of these
is refused (call ``layer.eval()``); one without them computes the same in both modes. Under
``torch.autocast`` a step is the layer's own call on a one-step sequence, so it gives the
layer's dtypes and numbers (torch's cell kernels follow other autocast rules than its sequence
kernels, and the options torch lacks run in the parameters' dtype with autocast off).

Batch norm (``norm="batch"``) normalizes step ``t`` with the running statistics of slot ``t``,
so a stream counts its steps: 0 for a call with ``state=None`` (a new sequence), one more
than the previous call otherwise; ``step=t`` gives the index explicitly: when one ``Stream``
serves several sequences in turn, and at the first step of a sequence begun from a state of the
caller's (``step=0`` for a new one, ``step=len(prompt)`` after ``layer(prompt)``), which the count
cannot know. (Restarting at 0 whenever the state is another object than the previous call's
output would instead restart a beam search's reordered or a detached state silently.)

Shapes: ``x_t`` is ``(B, input_size)`` or ``(input_size,)``; ``state`` is what the layer
takes as ``hx`` — ``(h, c)`` for LSTM, ``h`` otherwise, each ``(num_layers, B, S)`` (or
``(num_layers, S)`` unbatched) — or ``None`` for zeros; ``y_t`` is ``(B, H_out)``.
"""

from __future__ import annotations

import torch
from torch import _VF, Tensor

from .. import _checks
from ..cells.base import StepContext
from ..layers import RecurrentStack

_CELLS = {
    "LSTM": _VF.lstm_cell,
    "GRU": _VF.gru_cell,
    "RNN_TANH": _VF.rnn_tanh_cell,
    "RNN_RELU": _VF.rnn_relu_cell,
}


def _training_differs(layer: RecurrentStack) -> str:
    """Why ``layer`` in its current mode computes other numbers than in ``eval()`` ('' if not)."""
    if not layer.training:
        return ""
    why = [
        "regularizers" if layer._regularized() else "",
        "dropout between layers" if layer.dropout and layer.num_layers > 1 else "",
        "batch norm" if any(getattr(c, "norm", None) == "batch" for c in layer.cells) else "",
    ]
    return ", ".join(w for w in why if w)


def _wrapper_attr(layer) -> str:
    """The attribute under which ``layer`` wraps a :class:`RecurrentStack` ('' if none):
    ``layer`` of ``rnnkit.cuda_graphed``, ``_orig_mod`` of ``torch.compile``."""
    for attr in ("layer", "_orig_mod"):
        if isinstance(getattr(layer, attr, None), RecurrentStack):
            return attr
    return ""


class Stream:
    """Stateful single-step runner of a unidirectional recurrent layer stack."""

    def __init__(self, layer) -> None:
        if not isinstance(layer, RecurrentStack):
            name = type(layer).__name__
            attr = _wrapper_attr(layer)
            instead = (
                f"it wraps a {type(getattr(layer, attr)).__name__}: pass its .{attr} (a step runs "
                "the layer's cells, not the wrapper's graphs or compiled code)"
                if attr
                else f"step it with its own {name}.step(x_t, state)"
                if callable(getattr(layer, "step", None))
                else "build it as rnnkit.LSTM / GRU / RNN (torch.nn's arguments) to stream it"
            )
            raise TypeError(
                f"Stream supports rnnkit's cell-based layer stacks (rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN: "
                f"rnnkit.RecurrentStack), got {type(layer).__module__}.{name}: {instead}"
            )
        if layer.bidirectional:
            raise ValueError(
                "Stream needs a unidirectional layer (bidirectional=False), got bidirectional=True"
            )
        self.layer = layer
        # torch's cell kernels; not with proj_size (lstm_cell sizes its gates from h)
        self._fast = [None if getattr(c, "proj_size", 0) else c.torch_mode() for c in layer.cells]
        self._t = -1  # the time index of the last step (batch norm's statistics slot)

    def step(self, x: Tensor, state=None, step: int | Tensor | None = None):
        """One step of every layer: returns ``(y_t, new_state)`` (state shaped like ``hx``).

        ``step``: the time index of ``x_t`` in its sequence (default: 0 when ``state`` is
        None, else one more than the previous call's, also for a state the previous call did not
        return: give it for a sequence begun from a state of your own); only batch norm reads it."""
        m = self.layer
        # as the layer's ``step``: a numpy int or a 0-d integer tensor too
        t = _checks.check_step(step) if step is not None else (0 if state is None else self._t + 1)
        why = _training_differs(m)
        if why:  # else batch statistics (running ones updated) or dropout, silently
            raise ValueError(f"Stream runs evaluation semantics: call layer.eval() (in training mode: {why})")
        _checks.check_tensor(x, "x_t")
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 2 or x.shape[1] != m.input_size:
            raise ValueError(f"x_t must be (B, {m.input_size}) or ({m.input_size},), got {tuple(x.shape)}")
        _checks.check_like(x, m._ref, "x_t")
        _checks.check_real_relu(m.cells, x)  # as the layer (torch's relu cell: "clamp is not supported")
        _checks.check_real_norm(m.cells, x)
        names = m.cells[-1].state_names
        if state is None:
            shapes = m.state_shapes(x.shape[0])
            comps = tuple(x.new_zeros(s) for s in shapes)
        else:
            if isinstance(state, (tuple, list)) and len(state) != len(names):
                raise ValueError(f"state must hold {names}, got {len(state)} tensor(s)")
            # as the layer's hx (a state of another batch would broadcast in some cells' steps)
            shapes = m.state_shapes(None if unbatched else x.shape[0])
            comps = _checks.check_state(state, names, shapes, m._ref)
            if unbatched:
                comps = tuple(s.unsqueeze(1) for s in comps)
        if _checks.autocast_on(x.device.type):
            # the layer's autocast rule, not its cells': torch's sequence kernels for standard
            # configurations (their dtypes differ from the cell kernels': LSTM's bfloat16 on the
            # CPU), the parameters' dtype with autocast off for the rest; so the layer's own call
            y, out = m(x.unsqueeze(1 if m.batch_first else 0), comps if len(comps) > 1 else comps[0], step=t)
            self._t = t
            out, y = out if isinstance(out, tuple) else (out,), y.squeeze(1 if m.batch_first else 0)
            if unbatched:
                y, out = y.squeeze(0), tuple(s.squeeze(1) for s in out)
            return y, (out if len(out) > 1 else out[0])
        new: list[list[Tensor]] = [[] for _ in comps]
        for k, cell in enumerate(m.cells):
            p = m.layer_params(k, 0)
            prev = tuple(s[k] for s in comps)
            mode = self._fast[k]
            if mode is not None:
                args = (p["weight_ih"], p["weight_hh"], p.get("bias_ih"), p.get("bias_hh"))
                if mode == "LSTM":
                    cur: tuple[Tensor, ...] = tuple(_CELLS[mode](x, prev[:2], *args))
                else:
                    cur = (_CELLS[mode](x, prev[0], *args),)
            else:
                ctx = StepContext(t=t, training=False, extra={"step": t})
                cur = cell.step(p, cell.project_input(p, x), prev, ctx)
            probs = m.zoneout_probs[k]
            if any(probs):  # evaluation zoneout: the expectation
                cur = tuple(torch.lerp(s1, s0, q) if q else s1 for s0, s1, q in zip(prev, cur, probs))
            for i, s in enumerate(cur):
                new[i].append(s)
            x = cur[0]  # no dropout between layers: evaluation
        self._t = t
        out = tuple(torch.stack(s) for s in new)
        if unbatched:
            x, out = x.squeeze(0), tuple(s.squeeze(1) for s in out)
        return x, (out if len(out) > 1 else out[0])
