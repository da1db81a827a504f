"""Headless matplotlib figures of the diagnostics (``matplotlib.figure.Figure``, no pyplot:
no display, no global backend switch). Every function writes one PNG and returns its path.

Inputs are nested dicts ``{model label: {stage: result}}`` (stages such as ``"init"`` and
``"trained"``) so one figure compares models side by side, stage by stage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .activity import LayerActivity
from .gradient_flow import GradientFlow
from .memory import HorizonResult
from .spectrum import JacobianSpectrum, PowerIteration

DPI = 80
_COLORS = [
    "tab:red",
    "tab:blue",
    "tab:green",
    "tab:purple",
    "tab:orange",
    "tab:brown",
    "tab:pink",
    "tab:gray",
]


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def _save(fig, path: str | os.PathLike) -> str:
    """Write ``fig`` as PNG atomically, as the training kit's plots: beside ``path``, then renamed
    over it, so a crash or a failed render leaves the previous figure, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return str(path)


def _stages(data: Mapping[str, Mapping[str, object]]) -> list[str]:
    seen: list[str] = []
    for per in data.values():
        seen += [s for s in per if s not in seen]
    return seen


def _positive(y: np.ndarray) -> np.ndarray:
    """Zeros (no gradient at all) are not drawable on a log axis: mask them."""
    y = np.asarray(y, dtype=float)
    return np.where(y > 0, y, np.nan)


def plot_gradient_flow(flows: Mapping[str, Mapping[str, Mapping[str, GradientFlow]]], path) -> str:
    """``flows[model][stage][loss kind]``: rows = loss kinds, columns = stages; one line per
    model (top layer, forward direction; LSTM's ``∂L/∂c_t`` dashed)."""
    stages = _stages(flows)
    kinds = list(next(iter(next(iter(flows.values())).values())))
    fig = _figure(4.2 * len(stages), 3.0 * len(kinds))
    axes = fig.subplots(len(kinds), len(stages), squeeze=False, sharey="row")
    for r, kind in enumerate(kinds):
        for c, stage in enumerate(stages):
            ax = axes[r][c]
            for i, (model, per) in enumerate(flows.items()):
                if stage not in per:
                    continue
                gf = per[stage][kind]
                label = [lb for lb in gf.labels if not gf.reverse[lb]][-1]
                dist = gf.distance(label)
                for name, style in (("h", "-"), ("c", "--")):
                    if name in gf.norms[label]:
                        ax.semilogy(dist, _positive(gf.norms[label][name]), style, color=_COLORS[i % 8],
                                    label=f"{model} ∂L/∂{name}")  # fmt: skip
            ax.set_title(
                f"{stage}: loss at {'the last step' if kind == 'last' else 'every step'}", fontsize=10
            )
            ax.set_xlabel("steps before the end (distance from the last loss)")
            if c == 0:
                ax.set_ylabel("‖∂L/∂h_t‖")
            ax.grid(True, which="major", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def plot_jacobian(spectra: Mapping[str, Mapping[str, JacobianSpectrum]], path) -> str:
    """Top: ``‖J_{T-1} ⋯ J_{T-k}‖₂`` against ``k``; bottom: the largest and smallest singular
    value of each step Jacobian ``J_t`` along the sequence. Columns = stages."""
    stages = _stages(spectra)
    fig = _figure(4.2 * len(stages), 6.0)
    axes = fig.subplots(2, len(stages), squeeze=False, sharey="row")
    for c, stage in enumerate(stages):
        top, bot = axes[0][c], axes[1][c]
        for i, (model, per) in enumerate(spectra.items()):
            if stage not in per:
                continue
            js, col = per[stage], _COLORS[i % 8]
            k = np.arange(1, len(js.product_norms) + 1)
            top.semilogy(k, _positive(js.product_norms), color=col, label=f"{model} ({'·'.join(js.state)})")
            t = np.arange(len(js.singular_values))
            bot.semilogy(t, _positive(js.singular_values[:, 0]), color=col, label=f"{model} σ_max")
            bot.semilogy(t, _positive(js.singular_values[:, -1]), ":", color=col, label=f"{model} σ_min")
        top.axhline(1.0, color="k", lw=0.8)
        bot.axhline(1.0, color="k", lw=0.8)
        top.set_title(f"{stage}: norm of the Jacobian product", fontsize=10)
        top.set_xlabel("k (steps back from the end)")
        bot.set_title(f"{stage}: singular values of ∂s_t/∂s_(t-1)", fontsize=10)
        bot.set_xlabel("time step t")
        top.grid(True, alpha=0.3)
        bot.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_eigenvalues(eigs: Mapping[str, Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]], path) -> str:
    """``eigs[model][stage][layer label][block]``: eigenvalues on the complex plane with the
    unit circle; rows = models, columns = stages; first layer shown, one colour per block."""
    stages, models = _stages(eigs), list(eigs)
    fig = _figure(3.0 * len(stages), 2.9 * len(models))
    axes = fig.subplots(len(models), len(stages), squeeze=False)
    circle = np.exp(1j * np.linspace(0, 2 * np.pi, 200))
    for r, model in enumerate(models):
        for c, stage in enumerate(stages):
            ax = axes[r][c]
            ax.plot(circle.real, circle.imag, "k-", lw=0.8)
            per_layer = eigs[model].get(stage, {})
            if per_layer:
                label, blocks = next(iter(per_layer.items()))
                rho = []
                for i, (name, ev) in enumerate(blocks.items()):
                    ax.scatter(ev.real, ev.imag, s=10, color=_COLORS[i % 8], label=name)
                    rho.append(np.abs(ev).max())
                ax.set_title(f"{model} {stage} ({label}): ρ max {max(rho, default=0):.2f}", fontsize=9)
                ax.legend(fontsize=6, loc="lower right")
            ax.set_aspect("equal")
            ax.axhline(0, color="gray", lw=0.4)
            ax.axvline(0, color="gray", lw=0.4)
    return _save(fig, path)


def plot_power_iteration(pi: PowerIteration, path, title: str = "W_hh") -> str:
    """Left: distance (sine of the angle) of ``h_k`` to the dominant eigen-subspace with the
    predicted ``|λ₂/λ₁|^k``; right: the iterates, unit by unit."""
    fig = _figure(8.4, 3.2)
    left, right = fig.subplots(1, 2)
    k = np.arange(len(pi.angles))
    left.semilogy(k, _positive(pi.angles), "o-", ms=3, label="sin ∠(h_k, dominant eigenvector)")
    ref = pi.angles[0] * pi.rate**k
    left.semilogy(k, _positive(ref), "k--", label=f"|λ₂/λ₁|^k, ratio {pi.rate:.2f}")
    left.set_xlabel("iteration k of h ← W h / ‖W h‖")
    lam = pi.eigenvalues[0]
    lam_s = f"{lam:.2f} (complex pair)" if pi.subspace.shape[1] == 2 else f"{lam.real:.2f}"
    left.set_title(f"power iteration on {title}: λ₁ = {lam_s}", fontsize=9)
    left.legend(fontsize=7)
    left.grid(True, alpha=0.3)
    lim = np.abs(pi.iterates).max()
    im = right.imshow(
        pi.iterates.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest"
    )
    right.set_xlabel("iteration k")
    right.set_ylabel("unit")
    if pi.subspace.shape[1] == 2:
        right.set_title("iterates h_k: rotate inside the dominant eigen-plane", fontsize=9)
    else:
        right.set_title("iterates h_k: converge to ±the dominant eigenvector", fontsize=9)
    fig.colorbar(im, ax=right)
    return _save(fig, path)


_GATE_ORDER = ("i", "f", "o", "r", "z", "g", "n")
_SIGMOID = ("i", "f", "o", "r", "z")


def plot_activity(
    stages: Mapping[str, Sequence[LayerActivity]],
    path,
    inputs: Mapping[str, np.ndarray] | None = None,
    title: str = "",
    gates: Sequence[str] = ("i", "f", "o", "r", "z"),
) -> str:
    """Heatmaps (units × steps) of the first layer's states and gates; columns = stages.

    ``inputs[stage]`` ``(T, I)`` is drawn above as a strip. Gate values (σ) use a 0..1
    scale, states a symmetric one."""
    names = list(stages)
    first = {s: acts[0] for s, acts in stages.items()}
    ref = first[names[0]]
    rows = [("state", n) for n in ref.states] + [
        ("gate", g) for g in _GATE_ORDER if g in ref.gates and g in gates
    ]
    has_in = inputs is not None
    heights = ([0.5] if has_in else []) + [1.0] * len(rows)
    fig = _figure(4.6 * len(names), 0.6 + 1.25 * sum(heights))
    axes = fig.subplots(len(heights), len(names), squeeze=False, gridspec_kw={"height_ratios": heights})
    for c, stage in enumerate(names):
        act, r0 = first[stage], 0
        if has_in:
            x = np.asarray(inputs[stage])
            axes[0][c].imshow(x.T, aspect="auto", cmap="Greys", interpolation="nearest")
            axes[0][c].set_title(f"{title} {stage}: input", fontsize=9)
            axes[0][c].set_yticks([])
            r0 = 1
        for r, (kind, name) in enumerate(rows):
            ax = axes[r0 + r][c]
            data = act.states[name] if kind == "state" else act.gates[name]
            if kind == "gate" and name in _SIGMOID:
                im = ax.imshow(data.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            else:
                lim = max(np.abs(data).max(), 1e-6)
                im = ax.imshow(
                    data.T, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest"
                )
            what = {"h": "hidden state h", "c": "cell state c"}.get(
                name, f"gate {name}" if kind == "gate" else name
            )
            ax.set_title(what if has_in or r else f"{title} {stage}: {what}", fontsize=8)
            ax.set_ylabel("unit", fontsize=7)
            ax.tick_params(labelsize=6)
            fig.colorbar(im, ax=ax, fraction=0.04)
        axes[-1][c].set_xlabel("time step")
        if act.note:  # in the top title: text below the last axes would collide with its label
            top = axes[0][c]
            top.set_title(f"{top.get_title()}  ({act.note})", fontsize=8)
    return _save(fig, path)


def plot_memory_horizon(result: HorizonResult, path) -> str:
    """Held-out accuracy against lag for each task (threshold dashed); the legend gives each
    variant's horizon."""
    tasks = [t for t in ("copy", "plus_one") if any(r["task"] == t for r in result.rows)]
    fig = _figure(4.2 * len(tasks), 3.2)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    titles = {"copy": "copy-memory (recall accuracy)", "plus_one": "+1 detection (accuracy)"}
    for ax, task in zip(axes, tasks):
        for i, variant in enumerate(result.horizon):
            rs = [r for r in result.rows if r["task"] == task and r["variant"] == variant]
            if not rs:
                continue
            lags, acc = [r["lag"] for r in rs], [r["accuracy"] for r in rs]
            h = result.horizon[variant][task]
            ax.plot(lags, acc, "o-", color=_COLORS[i % 8], label=f"{variant}: horizon {h}")
        ax.axhline(result.budget.threshold, color="k", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(result.budget.lags), [str(v) for v in result.budget.lags])
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("lag (steps)")
        ax.set_title(titles[task], fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    b = result.budget
    fig.suptitle(
        f"memory horizon: ≤ {b.steps} Adam steps × batch {b.batch_size}, hidden {b.hidden_size}", fontsize=10
    )
    return _save(fig, path)
