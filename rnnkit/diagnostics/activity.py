"""Activity over a sequence: hidden state, cell state and every gate, per unit and step.

Gates are not outputs of the fused layers, so they are recomputed from each step's
previous state and projected input (the states come from
:func:`rnnkit.diagnostics.trace.replay`):

* rnnkit's LSTM and GRU cells, every option of the zoo included (and so ``torch.nn``'s
  LSTM/GRU, whose parameters the replay wraps in them), offer the hook below; their step
  shares its gate code with it. Names are torch's: LSTM ``i, f, g, o`` where the gate exists
  (NIG, NFG, NOG drop ``i``, ``f``, ``o``; CIFG reports its ``i = 1 − f``; ``g`` is the
  candidate as added to ``c``, without tanh for NIAF), so that ``c_t = f ⊙ c_{t-1} + i ⊙ g``
  (a missing gate read as 1) and ``h_t = o ⊙ act(norm(c_t))``; GRU ``r, z, n``, with
  ``h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}`` in torch's form (Cho's form and layer norm too) and
  ``h_t = z ⊙ n + (1 - z) ⊙ h_{t-1}`` for MUT1-3 (there ``z`` gates the candidate);
* any cell may offer the hook ``cell.gates(p, xp, state[, ctx]) -> dict[str, Tensor]``
  (``p``: its parameter dict, ``xp``: ``project_input`` of one step ``(B, G)``, ``state``:
  the state tuple *before* the step; values ``(B, units)``). It is called with the whole
  batch (batch norm's training-mode statistics are the batch's) and, if it has a parameter
  named ``ctx``, with the step's :class:`~rnnkit.cells.StepContext` (``t``, ``training``,
  ``extra["step"]``: the steps this direction has taken, which picks batch norm's running
  statistics). It is used whenever present, and must not change the parameters or buffers;
* other standard cells (``cell.torch_mode()`` is not ``None``, no hook) — the step math is
  replayed here in torch's gate order::

      LSTM: i, f, o = σ(·), g = tanh(·) of  W_ih x_t + b_ih + W_hh h_{t-1} + b_hh  (chunks i f g o)
      GRU:  r, z = σ(W_ir/z x_t + b_ir/z + W_hr/z h_{t-1} + b_hr/z)
            n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn))

  (the Elman RNN has no gates: states only, with a note);
* other cells (``torch_mode()`` is ``None`` and no hook): states only, with a note;
* the time-parallel layers (:mod:`rnnkit.diagnostics.parallel`): MinGRU ``z``; MinLSTM the
  normalized ``f′, i′`` (named ``f``, ``i``; ``f′ + i′ = 1``); QRNN ``f, o`` with states
  ``h`` (the output ``o ⊙ c``) and ``c``; the LRU has no gates, its states are ``Re h``,
  ``Im h`` and its output ``y``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import _checks
from ..cells.base import Cell, StepContext
from ..parallel import LRU, QRNN, ParallelRecurrent
from .parallel import layer_gates
from .trace import check_real, check_sample, layer_labels, layer_views, replay, untouched


@dataclass
class LayerActivity:
    """One layer-direction: ``states[name]`` and ``gates[name]`` are ``(T, units)`` arrays
    in time order; ``note`` says why gates are missing, if they are."""

    label: str
    family: str
    states: dict[str, np.ndarray]
    gates: dict[str, np.ndarray]
    note: str = ""


def standard_gates(
    cell: Cell, p: dict[str, Tensor], xp: Tensor, state: tuple[Tensor, ...]
) -> dict[str, Tensor]:
    """Gate values of torch's LSTM (``i f g o``) or GRU (``r z n``) step; ``{}`` for the RNN."""
    H = cell.hidden_size
    if cell.family == "lstm":
        pre = xp + state[0] @ p["weight_hh"].t()
        i, f, g, o = pre.chunk(4, 1)
        return {"i": torch.sigmoid(i), "f": torch.sigmoid(f), "g": torch.tanh(g), "o": torch.sigmoid(o)}
    if cell.family == "gru":
        hh = state[0] @ p["weight_hh"].t()
        if p.get("bias_hh") is not None:
            hh = hh + p["bias_hh"]
        r = torch.sigmoid(xp[:, :H] + hh[:, :H])
        z = torch.sigmoid(xp[:, H : 2 * H] + hh[:, H : 2 * H])
        n = torch.tanh(xp[:, 2 * H :] + r * hh[:, 2 * H :])
        return {"r": r, "z": z, "n": n}
    return {}


TORCH_ORDER = ("i", "f", "g", "o", "r", "z", "n")


def _ordered(names) -> list[str]:
    """Gate names in torch's order (``i f g o``, ``r z n``; the LSTM cells' hook computes ``f``
    first, which CIFG's ``i = 1 − f`` needs), a hook's other names after them as it gave them."""
    known = [n for n in TORCH_ORDER if n in names]
    return known + [n for n in names if n not in TORCH_ORDER]


def _takes_ctx(hook) -> bool:
    """Whether a ``gates`` hook takes the step's context (``gates(p, xp, state, ctx)``)."""
    try:
        return "ctx" in inspect.signature(hook).parameters
    except (TypeError, ValueError):  # a callable without a signature: the three-argument hook
        return False


def gate_source(cell: Cell) -> str:
    """``"hook"`` (the cell's ``gates``), ``"standard"`` (replayed here) or ``"none"``."""
    if callable(getattr(cell, "gates", None)):
        return "hook"
    if cell.torch_mode() is not None and cell.family in ("rnn", "lstm", "gru"):
        return "standard"
    return "none"


def activity(module: nn.Module, inputs: Tensor, *, sample: int = 0, hx: Any = None) -> list[LayerActivity]:
    """States and gates of every layer-direction of ``module`` for one sequence.

    ``inputs`` as for the layer (``(T, B, I)``, batch-first, or unbatched); ``sample``
    picks the sequence. Returns one :class:`LayerActivity` per layer-direction. The module's
    buffers and the random state are left as they were (training-mode masks are drawn without
    advancing torch's generators).

    The gates are those of the replay's steps (:func:`~rnnkit.diagnostics.replay`), which they
    rebuild: in training mode with zoneout's fresh masks, batch norm's batch statistics and
    inter-layer dropout, but without a recurrent-dropout mask (nor weight drop or locked
    dropout), which the replay does not run either (it warns); ``model.eval()`` measures the
    model as it runs in evaluation."""
    with untouched(module):
        if isinstance(module, ParallelRecurrent):
            return _parallel_activity(module, inputs, sample, hx)
        return _activity(module, inputs, sample, hx)


def _activity(module: nn.Module, inputs: Tensor, sample: int, hx) -> list[LayerActivity]:
    views = layer_views(module)
    check_real(views, "activity")
    with torch.no_grad():
        _, _, tr = replay(module, inputs, hx)
        B = tr.inputs[0].shape[1]
        check_sample(sample, B)
        device = tr.inputs[0].device.type
        off = (
            torch.autocast(device, enabled=False) if _checks.autocast_on(device) else contextlib.nullcontext()
        )
        result = []
        for k, d, label in layer_labels(module):
            cell, p = views[k].cell, views[k].params[d]
            steps = tr.states[k][d]
            T = len(steps)
            states = {
                name: np.stack([s[i][sample].double().cpu().numpy() for s in steps])
                for i, name in enumerate(tr.state_names)
            }
            source, gates, note = gate_source(cell), {}, ""
            if source == "none":
                note = f"{type(cell).__name__} is not a standard cell and has no gates() hook: states only"
            else:
                # the whole batch: batch norm's training-mode statistics are the batch's
                x = tr.inputs[k]
                with off:  # as the replay's states (parameters' dtype, autocast off)
                    xp = cell.project_input(p, x.reshape(T * B, -1)).view(T, B, -1)
                fn = cell.gates if source == "hook" else functools.partial(standard_gates, cell)
                with_ctx = source == "hook" and _takes_ctx(cell.gates)
                per_t = []
                for t in range(T):
                    prev_t = t + 1 if d else t - 1
                    prev = tr.initial[k][d] if prev_t in (-1, T) else steps[prev_t]
                    # the step's context as the replay's: steps taken in this direction so far, and no
                    # recurrent-dropout mask (the replay's states had none: the gates must rebuild them)
                    ctx = StepContext(t=t, training=module.training, recurrent_mask=None,
                                      extra={"step": T - 1 - t if d else t})  # fmt: skip
                    with off:
                        g = fn(p, xp[t], prev, ctx) if with_ctx else fn(p, xp[t], prev)
                    per_t.append({n: v[sample] for n, v in g.items()})
                gates = {
                    n: np.stack([g[n].double().cpu().numpy() for g in per_t]) for n in _ordered(per_t[0])
                }
                if not gates:
                    note = "the Elman RNN has no gates"
            result.append(LayerActivity(label, cell.family, states, gates, note))
    return result


def _parallel_activity(module: ParallelRecurrent, inputs: Tensor, sample: int, hx) -> list[LayerActivity]:
    with torch.no_grad():
        _, _, tr = replay(module, inputs, hx)
        B = tr.inputs[0].shape[1]
        check_sample(sample, B)
        result = []
        for k, d, label in layer_labels(module):
            s = torch.stack([st[0][sample] for st in tr.states[k][d]])  # (T, S)
            y = tr.outputs[k][d][:, sample]
            if isinstance(module, LRU):
                states = {"y": y, "Re h": s.real, "Im h": s.imag}
            elif isinstance(module, QRNN):
                states = {"h": y, "c": s}
            else:
                states = {"h": s}
            x = tr.inputs[k][:, sample : sample + 1]
            gates = {n: g[:, 0] for n, g in layer_gates(module, module.layer_params(k, d), x, d == 1).items()}
            note = "the LRU has no gates (its decay λ is fixed: recurrent_eigenvalues)" if not gates else ""
            result.append(LayerActivity(
                label, type(module).__name__.lower(),
                {n: v.double().cpu().numpy() for n, v in states.items()},
                {n: v.double().cpu().numpy() for n, v in gates.items()}, note,
            ))  # fmt: skip
    return result
