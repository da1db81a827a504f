"""Diagnostics of the time-parallel layers: :class:`rnnkit.MinGRU`, :class:`rnnkit.MinLSTM`,
:class:`rnnkit.QRNN` and :class:`rnnkit.LRU` (any :class:`rnnkit.parallel.ParallelRecurrent`).

Each of them runs, per layer-direction, a diagonal *linear* recurrence::

    s_t = a_t ⊙ s_{t−1} + b_t          (a_t, b_t functions of the input x_t only)

    MinGRU  (Feng et al. 2024)      s = h,  a_t = 1 − z_t
    MinLSTM (Feng et al. 2024)      s = h,  a_t = f′_t = f_t / (f_t + i_t)
    QRNN    (Bradbury et al. 2017)  s = c,  a_t = f_t                      (output h_t = o_t ⊙ c_t)
    LRU     (Orvieto et al. 2023)   s = h,  a_t = λ = exp(−exp(ν) + iθ)    (complex, fixed)

The whole-sequence forward hands the scan's states to nobody, so the diagnostics *replay*
the layer one ``step_layer`` at a time (:func:`replay_parallel`: the layer's own step
math and parameter tensors, equal to its forward in the tests) and keep every ``s_t``;
``∂L/∂s_t`` is then read off with autograd exactly as for the classic cells.

The step Jacobian is ``∂s_t/∂s_{t−1} = diag(a_t)``: it does not depend on the state, its
eigenvalues and singular values are the ``a_t`` (``|a_t|``) themselves, and the gradient
through time is ``∂L/∂s_t = ∂ℓ_t/∂s_t + a_{t+1} ⊙ ∂L/∂s_{t+1}``. So the *distribution of
the data-dependent decay* ``a_t`` (:func:`decay_spectrum`) plays the role that the
eigenvalues of ``W_hh`` play for a classic RNN: ``|a| → 1`` keeps the state and its
gradient over ``≈ −1/log|a|`` steps, ``|a| → 0`` forgets at once; ``|a| ≤ 1`` always, so
these layers cannot explode. For the LRU ``a_t = λ`` for every ``t``: its spectrum is the
fixed set of ``λ`` (``|λ|`` the decay, ``arg λ`` the rotation per step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..parallel import LRU, QRNN, MinGRU, MinLSTM, ParallelRecurrent
from ..parallel.mingru import check_positive_state

DECAY_NAMES = {MinLSTM: "f′ = f/(f+i)", MinGRU: "1 − z", QRNN: "f", LRU: "λ"}


def is_parallel(module: nn.Module) -> bool:
    return isinstance(module, ParallelRecurrent)


def state_names(module: ParallelRecurrent) -> tuple[str, ...]:
    """The recurrent state's name: ``c`` for the QRNN (its ``h_n`` holds ``c``), else ``h``."""
    return ("c",) if isinstance(module, QRNN) else ("h",)


def decay_name(module: nn.Module) -> str:
    for cls, name in DECAY_NAMES.items():
        if isinstance(module, cls):
            return name
    raise ValueError(
        f"the diagnostics know the decay a_t of MinGRU, MinLSTM, QRNN and LRU, not of {type(module).__name__}"
    )


def step_inputs(module: ParallelRecurrent, x: Tensor, reverse: bool, prev: Tensor | None = None) -> Tensor:
    """What ``step_layer`` takes at each step of ``x (T, B, I)``: ``x`` itself, or for a
    QRNN with ``window=2`` ``[x_{t−1}, x_t]`` (``x_{t+1}`` in reverse), ``x_{−1} = prev``
    (the state's ``x_prev``, zeros when ``None``) and ``x_T = 0`` (as in :meth:`rnnkit.QRNN.run`)."""
    if isinstance(module, QRNN) and module.window == 2:
        zero = torch.zeros_like(x[:1])
        if reverse:
            steps = torch.cat([x[1:], zero])
        else:
            steps = torch.cat([zero if prev is None else prev.to(x.dtype).unsqueeze(0), x[:-1]])
        return torch.cat([steps, x], -1)
    return x


def layer_decay(module: ParallelRecurrent, p: dict[str, Tensor], x: Tensor, reverse: bool) -> Tensor:
    """``a_t`` ``(T, B, S)`` of one layer-direction on its input ``x (T, B, I)``."""
    decay_name(module)  # a clear error for an unknown layer
    if isinstance(module, LRU):
        lam, _ = module.coefficients(p, x[:1, :1])
        return lam.reshape(1, 1, -1).expand(x.shape[0], x.shape[1], -1)
    if isinstance(module, QRNN):
        return module.gates(p, step_inputs(module, x, reverse))[1]
    a, _ = module.coefficients(module.project(p, x))  # MinGRU, MinLSTM
    return a.exp() if module.log_space else a


def layer_gates(
    module: ParallelRecurrent, p: dict[str, Tensor], x: Tensor, reverse: bool
) -> dict[str, Tensor]:
    """The gates of one layer-direction, ``{name: (T, B, H)}``: MinGRU ``z``; MinLSTM the
    normalized ``f′, i′`` (``f′ + i′ = 1``); QRNN ``f, o``; LRU none."""
    if isinstance(module, LRU):
        return {}
    if isinstance(module, QRNN):
        _, f, o = module.gates(p, step_inputs(module, x, reverse))
        return {"f": f, "o": o}
    a = layer_decay(module, p, x, reverse)
    return {"f": a, "i": 1 - a} if isinstance(module, MinLSTM) else {"z": 1 - a}


def replay_parallel(module: ParallelRecurrent, x: Tensor, hx=None, *, retain_grad: bool = False,
                    track: bool = False):  # fmt: skip
    """:func:`rnnkit.diagnostics.replay` for a parallel layer: ``(output, h_n, trace)``.

    ``trace.states[k][d][t]`` is ``(s_t,)`` (``s = h``, ``c`` for the QRNN; complex for the
    LRU) and ``trace.outputs[k][d]`` the layer-direction's output ``(T, B, H)``. Random
    masks (zoneout, dropout in training mode) are drawn afresh, not those of a forward."""
    from .trace import Trace, _as_time_major

    data, unbatched = _as_time_major(module, x)
    T, B = data.shape[0], data.shape[1]
    h0 = module._forward_state(hx, None if unbatched else B)  # validates shape and dtype
    convolved = isinstance(module, QRNN) and module.window == 2  # h0 = (c0, x_prevs), as forward's
    h0, prevs = h0 if convolved else (h0, None)
    if getattr(module, "log_space", False):
        check_positive_state(h0)  # as the forward does
    if (track or retain_grad) and not torch.is_grad_enabled():
        raise ValueError("tracking gradients through the replay needs autograd (not torch.no_grad())")
    D, names = module.num_directions, state_names(module)
    trace = Trace([], [], [], names)
    finals, lasts = [], []
    for k in range(module.num_layers):
        trace.inputs.append(data)
        lasts.append(data[-1])
        outs, per_dir, init_dir = [], [], []
        for d in range(D):
            p = module.layer_params(k, d)
            xs = step_inputs(module, data, d == 1, None if prevs is None or d else prevs[k])
            s = (
                h0[k * D + d]
                if h0 is not None
                else data.new_zeros(B, module.state_size, dtype=module.state_dtype)
            )
            if (track or retain_grad) and not s.requires_grad:
                s = s.detach().requires_grad_()
            init_dir.append((s,))
            steps: list[tuple[Tensor, ...]] = [()] * T
            ys: list[Tensor] = [data] * T
            for t in range(T - 1, -1, -1) if d else range(T):
                ys[t], s = module.step_layer(p, xs[t], s)
                if retain_grad and s.requires_grad:
                    s.retain_grad()
                steps[t] = (s,)
            finals.append(s)
            per_dir.append(steps)
            outs.append(torch.stack(ys))
        trace.states.append(per_dir)
        trace.initial.append(init_dir)
        trace.outputs.append(outs)
        data = outs[0] if D == 1 else torch.cat(outs, -1)
        if module.dropout and module.training and k < module.num_layers - 1:
            data = F.dropout(data, module.dropout, True)
    h_n, out = torch.stack(finals), data
    h_n = (h_n, tuple(lasts)) if convolved else h_n
    if unbatched:
        out, h_n = out.squeeze(1), module._unbatch_state(h_n)
    elif module.batch_first:
        out = out.transpose(0, 1)
    return out, h_n, trace


@dataclass
class DecaySpectrum:
    """The data-dependent decays of every layer-direction: ``decays[label]`` is ``a_t``
    ``(T, B, S)`` in time order (complex for the LRU, where it is ``λ`` at every step);
    ``name`` says what ``a`` is (``"1 − z"``, ``"f′ = f/(f+i)"``, ``"f"``, ``"λ"``)."""

    labels: list[str]
    decays: dict[str, np.ndarray]
    name: str

    def modulus_quantiles(
        self, label: str | None = None, q: Sequence[float] = (0.05, 0.5, 0.95)
    ) -> np.ndarray:
        """Quantiles of ``|a_t|`` over steps, batch and units (default: the first layer)."""
        return np.quantile(np.abs(self.decays[label or self.labels[0]]), q)

    def timescales(self, label: str | None = None) -> np.ndarray:
        """``−1/log|a_t|``: the steps over which a unit's state (and the gradient reaching
        it) decays by ``e`` — the memory time of each unit and step (``inf`` at ``|a| = 1``)."""
        m = np.abs(self.decays[label or self.labels[0]])
        with np.errstate(divide="ignore"):
            return -1.0 / np.log(m)


def decay_spectrum(module: nn.Module, inputs: Tensor, *, hx: Any = None) -> DecaySpectrum:
    """``a_t`` of every layer-direction of a MinGRU, MinLSTM, QRNN or LRU along ``inputs``
    (shaped as for the layer). The step Jacobian is ``diag(a_t)``: these are its
    eigenvalues, the diagonal recurrences' counterpart of the spectrum of ``W_hh``."""
    from .trace import layer_labels

    if not is_parallel(module):
        raise ValueError(
            "decay_spectrum is for the diagonal linear recurrences (MinGRU, MinLSTM, QRNN, LRU), got "
            f"{type(module).__name__}; for RNN/LSTM/GRU use jacobian_spectrum or recurrent_eigenvalues"
        )
    name = decay_name(module)
    from .trace import untouched

    with torch.no_grad(), untouched(module):  # training-mode masks: without advancing torch's generators
        _, _, tr = replay_parallel(module, inputs, hx)
        decays = {}
        for k, d, label in layer_labels(module):
            a = layer_decay(module, module.layer_params(k, d), tr.inputs[k], d == 1)
            decays[label] = _numpy(a)
    return DecaySpectrum(list(decays), decays, name)


def _numpy(a: Tensor) -> np.ndarray:
    """``a`` as a float64 (complex128) array: numpy has no bfloat16, which a half-precision layer's
    decays are (a bfloat16 layer's, or any under autocast)."""
    return a.detach().cpu().to(torch.complex128 if a.is_complex() else torch.float64).numpy()


def lru_eigenvalues(module: LRU) -> dict[str, dict[str, np.ndarray]]:
    """``{label: {"λ": λ}}`` by decreasing modulus: the LRU's recurrence is ``diag(λ)``."""
    from .trace import layer_labels

    out = {}
    for k, d, label in layer_labels(module):
        p = module.layer_params(k, d)
        with torch.no_grad():
            lam, _ = module.coefficients(p, p["B_re"].new_zeros(1, p["B_re"].shape[1]))
        ev = lam.cpu().numpy().astype(np.complex128)
        out[label] = {"λ": ev[np.argsort(-np.abs(ev), kind="stable")]}
    return out


def no_matrix_error(module: nn.Module, what: str) -> ValueError:
    """The error of the spectrum functions that need a fixed recurrent matrix."""
    name = type(module).__name__
    if isinstance(module, LRU):
        return ValueError(
            f"{what}: the LRU has no recurrent matrix to iterate, its recurrence is diag(λ); read λ with "
            "recurrent_eigenvalues(lru) (|λ| the decay, arg λ the rotation per step)"
        )
    return ValueError(
        f"{what}: {name} has no fixed recurrent matrix, its step Jacobian is diag(a_t) with a_t = "
        f"{decay_name(module)} computed from the input; use decay_spectrum({name.lower()}, x) for its "
        "distribution (the diagonal recurrence's spectrum)"
    )


def step_jacobians_parallel(module: ParallelRecurrent, inputs: Tensor, *, layer: int, direction: int,
                            sample: int, hx=None) -> tuple[np.ndarray, tuple[str, ...]]:  # fmt: skip
    """``J_t = diag(a_t)`` ``(T, S, S)`` in processing order (complex for the LRU)."""
    from .trace import check_layer_direction, check_sample

    check_layer_direction(module, layer, direction, module.num_layers, module.num_directions)
    with torch.no_grad():
        _, _, tr = replay_parallel(module, inputs, hx)
        B = tr.inputs[layer].shape[1]
        check_sample(sample, B)
        a = layer_decay(module, module.layer_params(layer, direction), tr.inputs[layer], direction == 1)
    a = _numpy(a[:, sample])
    if direction:
        a = a[::-1]
    return np.stack([np.diag(v) for v in a]), tr.state_names
