"""Gradient flow through time: ``‖∂L/∂h_t‖`` for every step ``t`` of every layer.

Backpropagation through time multiplies the loss gradient by one step Jacobian per step::

    ∂L/∂h_t = ∂ℓ_t/∂h_t + (∂h_{t+1}/∂h_t)ᵀ ∂L/∂h_{t+1}

so for a loss at the last step ``‖∂L/∂h_t‖`` behaves like ``ρ^(T-1-t)`` where ``ρ`` is
the typical gain of ``∂h_{t+1}/∂h_t``: it vanishes for ``ρ < 1`` and explodes for ``ρ > 1``
(Bengio et al. 1994; Pascanu et al. 2013). LSTM's additive cell state
``c_t = f_t ⊙ c_{t-1} + ...`` gives a path whose gain is the forget gate itself.

How it is measured: the recurrent layers are replayed step by step
(:func:`rnnkit.diagnostics.trace.replay`, the layer's own cells and parameters), keeping
every per-step state tensor; ``∂L/∂h_t`` is then ``torch.autograd.grad(L, h_t)`` for all
of them at once (the value ``h_t.retain_grad()`` would give, without touching the
parameters' ``.grad``). For a recurrent layer the replay is called directly; for a larger
model every recurrent submodule is replayed inside a forward hook that substitutes the
replayed (numerically identical) output, so ``loss_fn`` sees the usual model output.
For LSTM, ``∂L/∂h_t`` holds ``c_t`` fixed, and ``∂L/∂c_t`` is reported as well (the full
gradient of ``c_t``, including its path through ``h_t = o_t ⊙ tanh(c_t)``).

The time-parallel layers (MinGRU, MinLSTM, QRNN, LRU) are replayed with their own
``step_layer`` (:mod:`rnnkit.diagnostics.parallel`); their recurrent state is ``h``
(``c`` for the QRNN, whose output ``h_t = o_t ⊙ c_t`` does not feed back). The LRU's state
is complex: its norm is that of the real gradient with respect to ``(Re h_t, Im h_t)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import _checks
from .trace import Trace, find_recurrent, is_recurrent, layer_labels, replay, untouched

LOSSES = ("last", "per_step")


@dataclass
class GradientFlow:
    """Per-step gradient norms.

    ``norms[label][state]`` is an array ``(T,)`` of ``‖∂L/∂state_t‖`` (Frobenius norm over
    batch and units) indexed by time step ``t``; labels are ``l0``, ``l1``, ``l0_reverse``...
    (prefixed by the submodule name inside a larger model). ``reverse[label]`` marks
    backward directions.
    """

    labels: list[str]
    norms: dict[str, dict[str, np.ndarray]]
    reverse: dict[str, bool]
    loss: float
    kind: str
    extra: dict = field(default_factory=dict)

    def _norms(self, label: str) -> dict[str, np.ndarray]:
        """``norms[label]``, or a ValueError naming the labels (a bare KeyError named neither)."""
        if label not in self.norms:
            raise ValueError(f"no layer label {label!r}; the labels are {', '.join(map(repr, self.labels))}")
        return self.norms[label]

    def distance(self, label: str) -> np.ndarray:
        """Steps between ``t`` and the end of that direction's pass (``T-1-t``; ``t`` reversed)."""
        T = len(next(iter(self._norms(label).values())))
        t = np.arange(T)
        return t if self.reverse[label] else T - 1 - t

    def state(self, label: str) -> str:
        """The state reported first for ``label``: ``h`` (``c`` for the QRNN)."""
        return next(iter(self._norms(label)))

    def per_step_factor(self, label: str | None = None, state: str | None = None) -> float:
        """Average factor by which the norm changes per step away from the loss: the
        exponential of the least-squares slope of ``log ‖∂L/∂h_t‖`` against distance
        (``< 1`` vanishing, ``> 1`` exploding). NaN when fewer than two nonzero norms.
        ``label`` defaults to the forward direction of the last layer, ``state`` to
        :meth:`state`."""
        if label is None:  # the top layer's forward direction
            label = [lb for lb in self.labels if not self.reverse[lb]][-1]
        norms, state = self._norms(label), state or self.state(label)
        if state not in norms:
            raise ValueError(f"{label} has no state {state!r}; its states are {', '.join(map(repr, norms))}")
        n, dist = norms[state], self.distance(label)
        ok = (n > 0) & np.isfinite(n)
        if ok.sum() < 2:
            return float("nan")
        slope = np.polyfit(dist[ok], np.log(n[ok]), 1)[0]
        return float(np.exp(slope))


def readout_loss(output: Tensor, kind: str, time_dim: int, seed: int = 0) -> Tensor:
    """Linear probe loss ``L = Σ_t vᵀ h_t`` (``kind="per_step"``) or ``vᵀ h_{T-1}`` (``"last"``)
    summed over the batch, with a fixed random ``v`` (``N(0, 1/F)``, seeded).

    A linear loss makes ``∂ℓ/∂h`` independent of ``h``, so the measured profile is the
    Jacobian products alone."""
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    # (an index past them failed on "tuple index out of range", time_dim=-1 (the features) on a
    # matmul's "size mismatch")
    if not isinstance(output, Tensor) or output.dim() < 2:
        got = f"shape {tuple(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"expected an output (T, F), (T, B, F) or (B, T, F), got {got}")
    if not (_checks.is_int(time_dim) and 0 <= time_dim < output.dim() - 1):
        raise ValueError(
            f"time_dim must be an integer in [0, {output.dim() - 1}) (a dimension of the output "
            f"{tuple(output.shape)} before its features), got {time_dim!r}"
        )
    if output.is_complex():  # vᵀh is complex: autograd has no gradient of it ("real scalar outputs")
        raise ValueError(
            f"the linear probe needs a real output, got {output.dtype}: pass a loss_fn that returns a real "
            "scalar (e.g. lambda out: out[0].abs().sum())"
        )
    F = output.shape[-1]
    g = torch.Generator().manual_seed(seed)
    v = (torch.randn(F, generator=g, dtype=torch.float64) / F**0.5).to(output)
    if kind == "last":
        output = output.select(time_dim, output.shape[time_dim] - 1)
    return (output @ v).sum()


def _collect(traces: list[tuple[str, nn.Module, Trace]]):
    """Flatten every per-step state tensor, remembering (label, state name, t)."""
    keys, tensors, meta = [], [], {}
    for name, module, tr in traces:
        for k, d, label in layer_labels(module, name):
            meta[label] = (d == 1, len(tr.states[k][d]), tr.state_names)
            for t, state in enumerate(tr.states[k][d]):
                for i, s in enumerate(state):
                    keys.append((label, tr.state_names[i], t))
                    tensors.append(s)
    return keys, tensors, meta


def gradient_flow(
    model: nn.Module,
    inputs: Any,
    loss_fn: Callable[[object], Tensor] | None = None,
    *,
    hx: Any = None,
    loss: str | None = None,
    seed: int = 0,
) -> GradientFlow:
    """``‖∂L/∂h_t‖`` for every step of every recurrent layer of ``model``.

    Args:
        model: an rnnkit ``RNN``/``LSTM``/``GRU``/``RecurrentStack``, ``MinGRU``/``MinLSTM``/
            ``QRNN``/``LRU``, a ``torch.nn`` ``RNN``/``LSTM``/``GRU``, or any module containing
            such layers (dense input).
        inputs: what ``model`` is called with (a tuple is splatted), e.g. ``(T, B, I)``.
        loss_fn: maps the model's output (for a recurrent layer: ``(output, h_n)``) to a
            scalar. ``None`` (recurrent layers only): a fixed linear probe of the output,
            at the last step (``loss="last"``, the default) or summed over steps
            (``loss="per_step"``); ``loss`` with a ``loss_fn`` is an error (it was ignored).
        hx: initial state, when ``model`` is a recurrent layer (an error otherwise: a larger
            model's initial states are in its ``inputs``; it was ignored).

    The model's buffers and the random state are left as they were: in training mode its forward
    and the replay update batch norm's running statistics (restored after the gradient, which may
    need them) and draw dropout and zoneout masks.
    """
    if loss_fn is not None and loss is not None:
        raise ValueError(f"loss={loss!r} chooses the probe used without a loss_fn: give one or the other")
    if hx is not None and not is_recurrent(model):
        raise ValueError(
            f"hx is the initial state of a recurrent layer; {type(model).__name__} is not one (pass its "
            "initial states in inputs, as its forward takes them)"
        )
    with untouched(model):
        return _gradient_flow(model, inputs, loss_fn, hx, "last" if loss is None else loss, seed)


def _gradient_flow(model: nn.Module, inputs, loss_fn, hx, loss: str, seed: int) -> GradientFlow:
    traces: list[tuple[str, nn.Module, Trace]] = []
    if is_recurrent(model):
        out, h_n, tr = replay(model, inputs, hx, track=True)
        traces.append(("", model, tr))
        if loss_fn is None:
            time_dim = 1 if (model.batch_first and out.dim() == 3) else 0
            L = readout_loss(out, loss, time_dim, seed)
            kind = loss
        else:
            L, kind = loss_fn((out, h_n)), "custom"
    else:
        if loss_fn is None:
            raise ValueError("loss_fn is required when model is not itself a recurrent layer")
        layers = find_recurrent(model)
        if not layers:
            raise ValueError(f"{type(model).__name__} contains no recurrent layer the diagnostics can replay")
        handles = [
            m.register_forward_hook(partial(_replay_hook, traces, name), with_kwargs=True)
            for name, m in layers
        ]
        try:
            # a PackedSequence is a tuple too, but one input: the replay then names it
            splat = isinstance(inputs, tuple) and not isinstance(inputs, PackedSequence)
            output = model(*inputs) if splat else model(inputs)
        finally:
            for h in handles:
                h.remove()
        L, kind = loss_fn(output), "custom"
    if not isinstance(L, Tensor) or L.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {L!r}")
    keys, tensors, meta = _collect(traces)
    grads = torch.autograd.grad(L, tensors, allow_unused=True)
    norms: dict[str, dict[str, np.ndarray]] = {
        label: {n: np.zeros(T) for n in names} for label, (_, T, names) in meta.items()
    }
    for (label, name, t), g in zip(keys, grads):
        if g is not None:  # |g| first: a complex (LRU) gradient must not be cast to real
            g = g.detach()
            norms[label][name][t] = float((g.abs() if g.is_complex() else g).double().norm())
    return GradientFlow(
        labels=list(meta),
        norms=norms,
        reverse={k: v[0] for k, v in meta.items()},
        loss=float(L.detach()),
        kind=kind,
    )


def _replay_hook(traces, name, module, args, kwargs, output):
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if kwargs.get("lengths") is not None:
        raise ValueError("gradient_flow does not replay lengths=/packed input; pass a dense batch")
    out, h_n, tr = replay(module, x, hx, track=True)
    calls = sum(1 for n, _, _ in traces if n.split("#")[0] == name)
    traces.append((name if not calls else f"{name}#{calls}", module, tr))
    return out, h_n
