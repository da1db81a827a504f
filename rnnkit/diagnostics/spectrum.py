"""The recurrent spectrum: step Jacobians, eigenvalues of ``W_hh``, power iteration.

* :func:`jacobian_spectrum` — singular values of the one-step Jacobian
  ``J_t = ∂s_t/∂s_{t-1}`` along a sequence (``s = h``, or ``(h, c)`` for LSTM) and the
  spectral norm of the products ``J_{T-1} ⋯ J_{T-k}`` that backpropagation multiplies
  the gradient by: ``‖∂L/∂s_{T-1-k}‖ ≤ ‖J_{T-1} ⋯ J_{T-k}‖ ‖∂L/∂s_{T-1}‖``.
  For the Elman RNN ``J_t = diag(act'(a_t)) W_hh``.
* :func:`recurrent_eigenvalues` — eigenvalues of each recurrent matrix (one per gate for
  gated cells, ``W_hg W_hr`` with an LSTM projection); a spectral radius above one lets
  the linearized dynamics grow, below one they decay.
* :func:`power_iteration` — repeated ``h ← W h / ‖W h‖`` converges to the dominant
  eigenvector (to the dominant real invariant plane when the top eigenvalue is a complex
  pair) at rate ``|λ₂/λ₁|`` per step: what many steps of a linear recurrence do to any
  initial state.

The time-parallel layers (MinGRU, MinLSTM, QRNN, LRU) have the step Jacobian
``diag(a_t)`` (see :mod:`rnnkit.diagnostics.parallel`): :func:`jacobian_spectrum` reports
it, :func:`recurrent_eigenvalues` gives the LRU's ``λ``, and for the other three, whose
``a_t`` depends on the input, :func:`rnnkit.diagnostics.decay_spectrum` takes the role of
the eigenvalues (the functions that need a fixed matrix say so).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import _checks
from ..cells import GRUCellMath, LSTMCellMath, StepContext
from ..loop import _zoneout
from ..parallel import LRU
from .parallel import is_parallel, lru_eigenvalues, no_matrix_error, step_jacobians_parallel
from .trace import (
    check_layer_direction,
    check_real,
    check_sample,
    layer_labels,
    layer_views,
    replay,
    untouched,
    zoneout_probs,
)

GATE_NAMES = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


@dataclass
class JacobianSpectrum:
    """``singular_values (T, S)`` (descending) of ``J_t`` for ``t = 0..T-1`` (``J_0`` is
    taken at the initial state); ``product_norms (T,)``: entry ``k-1`` is
    ``‖J_{T-1} ⋯ J_{T-k}‖₂``; ``jacobians (T, S, S)``; ``state`` names the state layout."""

    singular_values: np.ndarray
    product_norms: np.ndarray
    jacobians: np.ndarray
    state: tuple[str, ...]


def step_jacobians(module: nn.Module, inputs: Tensor, *, layer: int = 0, direction: int = 0,
                   sample: int = 0, hx: Any = None) -> tuple[np.ndarray, tuple[str, ...]]:  # fmt: skip
    """``J_t = ∂s_t/∂s_{t-1}`` ``(T, S, S)`` for one sequence of the batch, ``S = Σ state sizes``,
    in processing order (reversed time for ``direction=1``). For a parallel layer
    ``J_t = diag(a_t)`` (complex for the LRU). Buffers and random state are left as they were."""
    with untouched(module):
        if is_parallel(module):
            return step_jacobians_parallel(module, inputs, layer=layer, direction=direction, sample=sample,
                                           hx=hx)  # fmt: skip
        return _step_jacobians(module, inputs, layer, direction, sample, hx)


def _step_jacobians(module: nn.Module, inputs: Tensor, layer: int, direction: int, sample: int,
                    hx) -> tuple[np.ndarray, tuple[str, ...]]:  # fmt: skip
    views = layer_views(module)
    check_real(views, "jacobian_spectrum")
    check_layer_direction(module, layer, direction, len(views), 2 if module.bidirectional else 1)
    with torch.no_grad():
        _, _, tr = replay(module, inputs, hx)
    B = tr.inputs[layer].shape[1]
    check_sample(sample, B)
    cell = views[layer].cell
    p = {k: v.detach() for k, v in views[layer].params[direction].items()}
    x = tr.inputs[layer][:, sample].detach()  # (T, I)
    T = x.shape[0]
    # autocast off, as in the replay (whose states are in the parameters' dtype): autocast has no
    # rule for a cell's step (mixed dtypes crash torch.lerp)
    device = x.device.type
    off = torch.autocast(device, enabled=False) if _checks.autocast_on(device) else contextlib.nullcontext()
    with torch.no_grad(), off:
        xp = cell.project_input(p, x)
    sizes = [s.shape[-1] for s in tr.initial[layer][direction]]
    prev = tuple(s[sample : sample + 1].detach() for s in tr.initial[layer][direction])
    jacs, zp = [], zoneout_probs(module, layer)  # s_t = p s_{t-1} + (1 - p) s̃_t in evaluation
    for n, t in enumerate(range(T - 1, -1, -1) if direction else range(T)):

        def f(s_flat: Tensor, t: int = t, n: int = n) -> Tensor:
            state = tuple(s_flat.split(sizes, -1))
            ctx = StepContext(t=t, extra={"step": n})  # n steps taken: batch norm's statistics slot
            new = cell.step(p, xp[t : t + 1], state, ctx)
            return torch.cat(_zoneout(state, new, t, zp, None) if zp else new, -1)

        with off:
            J = torch.autograd.functional.jacobian(f, torch.cat(prev, -1))  # (1, S, 1, S)
        jacs.append(J[0, :, 0, :].double().numpy())
        prev = tuple(s[sample : sample + 1].detach() for s in tr.states[layer][direction][t])
    return np.stack(jacs), tr.state_names


def jacobian_spectrum(module: nn.Module, inputs: Tensor, *, layer: int = 0, direction: int = 0,
                      sample: int = 0, hx: Any = None) -> JacobianSpectrum:  # fmt: skip
    """Singular values of the step Jacobians of one layer-direction along ``inputs``.

    ``inputs`` is the layer's input ``(T, B, I)`` (``(B, T, I)`` with ``batch_first``);
    ``sample`` picks the sequence of the batch. Cost: ``T`` Jacobians of size ``S × S``."""
    jacs, names = step_jacobians(module, inputs, layer=layer, direction=direction, sample=sample, hx=hx)
    sv = np.linalg.svd(jacs, compute_uv=False)
    prod = np.eye(jacs.shape[1])
    norms = []
    for J in jacs[::-1]:  # from the last step backwards, as the gradient travels
        prod = prod @ J
        norms.append(np.linalg.norm(prod, 2))
    return JacobianSpectrum(sv, np.array(norms), jacs, names)


def recurrent_matrices(module: nn.Module) -> dict[str, dict[str, np.ndarray]]:
    """The square recurrent matrices of every layer-direction: ``{label: {block: (H, H)}}``
    (float64; complex128 for a complex layer).

    Blocks are ``W_hh`` (RNN), the gates ``i f g o`` (LSTM; ``W_hg W_hr`` with a
    projection; an ablation's present gates, e.g. ``f g o``) or ``r z n`` (GRU; MUT1's ``r n``);
    other cells' ``weight_hh (G·H, H)`` is cut into ``G`` square blocks named by their index
    (none when it has another shape). The parallel
    layers have no such matrix: a ``ValueError`` says what to use instead."""
    if is_parallel(module):
        raise no_matrix_error(module, "recurrent_matrices")
    result: dict[str, dict[str, np.ndarray]] = {}
    views = layer_views(module)
    for k, d, label in layer_labels(module):
        cell, p = views[k].cell, views[k].params[d]
        blocks: dict[str, np.ndarray] = {}
        W = p.get("weight_hh")
        if W is not None:
            W = _wide(W)
            if "weight_hr" in p:  # LSTM projection: h_t = W_hr (o ⊙ tanh c_t)
                W = W @ _wide(p["weight_hr"])
            n = W.shape[1]
            if W.shape[0] % n == 0:
                G = W.shape[0] // n
                names = _gate_names(cell)
                names = names if len(names) == G else (("W_hh",) if G == 1 else tuple(map(str, range(G))))
                for g, name in enumerate(names):
                    blocks[name] = W[g * n : (g + 1) * n].numpy()
        result[label] = blocks
    return result


def _wide(W: Tensor) -> Tensor:
    """``W`` in float64 on the CPU, complex128 for a complex layer (``double()`` dropped the
    imaginary part: the eigenvalues were those of ``Re W``)."""
    return W.detach().cpu().to(torch.complex128 if W.is_complex() else torch.float64)


def _gate_names(cell) -> tuple[str, ...]:
    """The gates of ``weight_hh``'s row blocks: the ones present in an LSTM ablation (CIFG, NIG:
    ``f g o``) or a GRU variant (MUT1: ``r n``), which were named by their index; the family's
    otherwise."""
    if isinstance(cell, LSTMCellMath):
        return tuple(cell.layout.gates)
    if isinstance(cell, GRUCellMath):
        return tuple(cell.hid)
    return GATE_NAMES.get(cell.family, ())


def recurrent_eigenvalues(module: nn.Module) -> dict[str, dict[str, np.ndarray]]:
    """Eigenvalues (complex, by decreasing modulus) of each matrix of :func:`recurrent_matrices`;
    for the LRU ``{label: {"λ": λ}}`` (its recurrence is ``diag(λ)``). MinGRU, MinLSTM and
    QRNN have input-dependent decays instead: a ``ValueError`` points at ``decay_spectrum``."""
    if isinstance(module, LRU):
        return lru_eigenvalues(module)
    if is_parallel(module):
        raise no_matrix_error(module, "recurrent_eigenvalues")
    out = {}
    for label, blocks in recurrent_matrices(module).items():
        out[label] = {}
        for name, W in blocks.items():
            ev = np.linalg.eigvals(W)
            out[label][name] = ev[np.argsort(-np.abs(ev), kind="stable")]
    return out


@dataclass
class PowerIteration:
    """``iterates (steps+1, n)`` unit vectors; ``angles (steps+1,)``: sine of the angle
    between each iterate and the dominant invariant subspace; ``gains (steps,)``:
    ``‖W h_k‖``; ``eigenvalues`` by decreasing modulus; ``rate = |λ₂|/|λ₁|`` (for a
    complex dominant pair, the first eigenvalue of smaller modulus)."""

    iterates: np.ndarray
    angles: np.ndarray
    gains: np.ndarray
    eigenvalues: np.ndarray
    rate: float
    subspace: np.ndarray


def dominant_subspace(W: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Orthonormal basis ``(n, 1 or 2)`` of the real invariant subspace of the eigenvalue(s)
    of largest modulus, the sorted eigenvalues, and the convergence rate ``|λ_next|/|λ₁|``."""
    ev, vecs = np.linalg.eig(W)
    order = np.argsort(-np.abs(ev), kind="stable")
    ev, vecs = ev[order], vecs[:, order]
    v = vecs[:, 0]
    complex_pair = abs(ev[0].imag) > 1e-12 * max(1.0, abs(ev[0]))
    basis = np.stack([v.real, v.imag], 1) if complex_pair else v.real[:, None]
    q, _ = np.linalg.qr(basis)
    nxt = 2 if complex_pair else 1
    rate = float(abs(ev[nxt]) / abs(ev[0])) if len(ev) > nxt and abs(ev[0]) > 0 else 0.0
    return q, ev, rate


def power_iteration(
    W: Tensor | np.ndarray, steps: int = 50, h0: Tensor | np.ndarray | None = None, seed: int = 0
) -> PowerIteration:
    """Run ``h ← W h / ‖W h‖`` from ``h0`` (default: a seeded random unit vector)."""
    W = np.asarray(W.detach().cpu() if isinstance(W, Tensor) else W)
    if np.iscomplexobj(W):  # (the real cast dropped the imaginary part, with a ComplexWarning)
        raise ValueError(f"power_iteration needs a real matrix, got dtype {W.dtype}")
    W = W.astype(np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"power_iteration needs a square matrix, got shape {W.shape}")
    if not np.isfinite(W).all():  # (numpy's eig failed with "Array must not contain infs or NaNs")
        bad = int(np.size(W) - np.isfinite(W).sum())
        raise ValueError(f"power_iteration needs a finite W, got {bad} NaN/inf of its {W.size} entries")
    if not _checks.is_int(steps) or steps < 1:  # (True ran 1 step, 2.5 and "3" failed with a TypeError)
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    n = W.shape[0]
    h = np.random.default_rng(seed).standard_normal(n) if h0 is None else np.asarray(h0, np.float64)
    if h.shape != (n,) or not 0 < np.linalg.norm(h) < np.inf:  # (an inf h0 iterated as NaN)
        raise ValueError(f"h0 must be a finite nonzero vector of shape ({n},), got shape {h.shape}")
    q, ev, rate = dominant_subspace(W)
    h = h / np.linalg.norm(h)
    its, gains = [h], []
    for _ in range(steps):
        w = W @ h
        gains.append(np.linalg.norm(w))
        if gains[-1] == 0:
            raise ValueError("W h became zero: the power iteration stopped (W is nilpotent on h0)")
        h = w / gains[-1]
        its.append(h)
    its_a = np.stack(its)
    resid = its_a - (its_a @ q) @ q.T
    angles = np.linalg.norm(resid, axis=1)
    return PowerIteration(its_a, angles, np.array(gains), ev, rate, q)
