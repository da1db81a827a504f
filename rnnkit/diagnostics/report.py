"""``rnnkit diagnose``: PNGs and a text summary of gradient flow, spectrum, activity and
memory horizon, for freshly initialized cells (default) or for a checkpoint.

Default mode: RNN vs LSTM vs GRU (or ``--variants``), each at initialization and after a
short training on the "+1 detection" task, then the memory-horizon benchmark. With
``--checkpoint DIR``: one model built from ``--family/--input-size/--hidden-size/...``
gets the checkpoint's weights (:func:`load_weights`) and is diagnosed as it is.
The CLI calls :func:`add_arguments` and :func:`run`; ``python -m rnnkit.diagnostics``
calls :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..datasets import synthetic
from . import plots
from .activity import LayerActivity, activity
from .gradient_flow import GradientFlow, gradient_flow
from .memory import Budget, TaskModel, Variant, memory_horizon, parse_variant, train_task
from .spectrum import (
    JacobianSpectrum,
    jacobian_spectrum,
    power_iteration,
    recurrent_eigenvalues,
    recurrent_matrices,
)


def load_weights(module: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``model.safetensors`` of a checkpoint into an already built ``module``.

    ``path``: a ``.safetensors`` file, a checkpoint directory holding ``model.safetensors``,
    or a checkpoint root (its ``latest`` pointer, else its highest ``step-*``). Keys may
    carry a prefix (a recurrent layer saved inside a larger model, ``rnn.weight_ih_l0``):
    the prefix under which all of ``module``'s keys are found is stripped."""
    from safetensors.torch import load_file

    p = Path(path)
    if p.is_dir() and not (p / "model.safetensors").is_file():
        latest = p / "latest"
        steps = sorted(d for d in p.glob("step-*") if (d / "model.safetensors").is_file())
        if latest.is_file() and (p / latest.read_text().strip() / "model.safetensors").is_file():
            p = p / latest.read_text().strip()
        elif steps:
            p = steps[-1]
    f = p / "model.safetensors" if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"no model.safetensors found at {path}")
    tensors = load_file(str(f))
    want = set(module.state_dict())
    prefixes = sorted({k[: len(k) - len(w)] for k in tensors for w in want if k.endswith(w)}, key=len)
    for pre in prefixes:
        if pre and not pre.endswith("."):
            continue
        sub = {k[len(pre) :]: v for k, v in tensors.items() if k.startswith(pre)}
        if want <= set(sub):
            state = module.state_dict()
            bad = [f"{k}: expected {tuple(state[k].shape)}, got {tuple(sub[k].shape)}"
                   for k in sorted(want) if sub[k].shape != state[k].shape]  # fmt: skip
            if bad:
                raise ValueError(f"{f} has weights of another size for this module: " + "; ".join(bad))
            module.load_state_dict({k: sub[k] for k in want})
            return module
    raise ValueError(
        f"{f} does not hold the weights of this module: expected keys {sorted(want)} (optionally under a "
        f"common prefix), found {sorted(tensors)[:12]}"
    )


@dataclass
class Snapshot:
    """All diagnostics of one model at one stage."""

    flows: dict[str, GradientFlow]
    spectrum: JacobianSpectrum
    eigenvalues: dict[str, dict[str, np.ndarray]]
    activity: list[LayerActivity]
    inputs: np.ndarray
    accuracy: float | None = None


def probe_sequence(x: torch.Tensor) -> torch.Tensor:
    """The batch ``x`` with its first sequence replaced, for 1-feature (+1 task) input, by
    the probe the activity pictures show: all zeros but a single 1 at a quarter of the way."""
    if x.shape[-1] != 1:
        return x
    x = x.clone()
    x[0] = 0.0
    x[0, x.shape[1] // 4] = 1.0
    return x


def snapshot(rnn: nn.Module, x: torch.Tensor, accuracy: float | None = None) -> Snapshot:
    """Gradient flow (both losses), Jacobian spectrum, eigenvalues of ``rnn`` on batch-first
    ``x``; activity for its first sequence (see :func:`probe_sequence`)."""
    xt = x if rnn.batch_first else x.transpose(0, 1)
    return Snapshot(
        flows={k: gradient_flow(rnn, xt, loss=k) for k in ("last", "per_step")},
        spectrum=jacobian_spectrum(rnn, xt, sample=0),
        eigenvalues=recurrent_eigenvalues(rnn),
        activity=activity(rnn, xt, sample=0),
        inputs=x[0].double().numpy(),
        accuracy=accuracy,
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``rnnkit diagnose``."""
    a = parser.add_argument
    a("--out", default="diagnostics", help="output directory for the PNGs and summary (default: %(default)s)")
    a(
        "--variants",
        nargs="+",
        default=["rnn", "lstm", "gru"],
        help="cells to compare: family[:key=value,...] or label=family:key=value (default: rnn lstm gru)",
    )
    a("--hidden-size", type=int, default=16, help="hidden units of the compared cells (default: %(default)s)")
    a("--seq-len", type=int, default=40, help="length of the +1 sequences analysed (default: %(default)s)")
    a("--batch", type=int, default=16, help="sequences per analysed batch (default: %(default)s)")
    a(
        "--train-steps",
        type=int,
        default=300,
        help="Adam steps of the short +1 training (default: %(default)s)",
    )
    a("--lags", type=int, nargs="+", default=None, help="memory-horizon lags (default: 5 10 20 40 80)")
    a("--horizon-steps", type=int, default=None, help="training budget per horizon run (default: 400)")
    a("--no-horizon", action="store_true", help="skip the memory-horizon benchmark")
    a("--seed", type=int, default=0)
    a("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    a("--quick", action="store_true", help="tiny sizes and budgets (a smoke test of a few seconds)")
    g = parser.add_argument_group("checkpoint mode")
    g.add_argument("--checkpoint", default=None, help="checkpoint dir/root or .safetensors file to diagnose")
    g.add_argument("--family", default="lstm", help="rnn, rnn_relu, lstm or gru (checkpoint mode)")
    g.add_argument("--input-size", type=int, default=1, help="input features (checkpoint mode)")
    g.add_argument("--num-layers", type=int, default=1)
    g.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword of the layer (cell or layer option), repeatable")  # fmt: skip
    return parser


def _configure(args) -> tuple[Budget, Budget]:
    """(training budget of the +1 run, memory-horizon budget)."""
    if args.quick:
        args.hidden_size, args.seq_len, args.batch = min(args.hidden_size, 6), min(args.seq_len, 12), 4
        args.train_steps = min(args.train_steps, 20)
    for name in ("hidden_size", "seq_len", "batch", "train_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    train = Budget(hidden_size=args.hidden_size, steps=args.train_steps, lr=5e-3, threshold=0.99,
                   seed=args.seed)  # fmt: skip
    lags = tuple(args.lags) if args.lags else ((3, 6) if args.quick else (5, 10, 20, 40, 80))
    steps = args.horizon_steps or (20 if args.quick else 400)
    horizon = Budget(hidden_size=8 if args.quick else 32, steps=steps, eval_every=10 if args.quick else 50,
                     eval_size=64 if args.quick else 256, lags=lags, n_copy=2, seed=args.seed)  # fmt: skip
    return train, horizon


def _summary_lines(label: str, stage: str, snap: Snapshot) -> list[str]:
    gf = snap.flows["last"]
    top = [lb for lb in gf.labels if not gf.reverse[lb]][-1]
    n = gf.norms[top]["h"]
    rho = {
        layer: max((float(np.abs(ev).max()) for ev in blocks.values()), default=float("nan"))
        for layer, blocks in snap.eigenvalues.items()
    }
    acc = "" if snap.accuracy is None else f"  +1 accuracy {snap.accuracy:.3f}"
    lines = [
        f"{label:>8} {stage:>10}:{acc}",
        f"{'':>20}loss at last step: ‖∂L/∂h_0‖/‖∂L/∂h_T-1‖ = {n[0] / n[-1]:.3g}, "
        f"per-step factor {gf.per_step_factor():.3f}",
        f"{'':>20}step Jacobian: mean σ_max {snap.spectrum.singular_values[:, 0].mean():.3f}, "
        f"‖J_T-1⋯J_0‖ = {snap.spectrum.product_norms[-1]:.3g}",
        f"{'':>20}spectral radius of the recurrent blocks: "
        + ", ".join(f"{k} {v:.3f}" for k, v in rho.items()),
    ]
    if "c" in gf.norms[top]:
        c = gf.norms[top]["c"]
        lines.append(f"{'':>20}cell state: ‖∂L/∂c_0‖/‖∂L/∂c_T-1‖ = {c[0] / c[-1]:.3g}")
    return lines


def run(args: argparse.Namespace) -> int:
    """Run ``rnnkit diagnose`` with parsed ``args``; writes into ``args.out``. Returns 0.

    The models are tiny: intra-op threads only add synchronization (10x slower on a
    loaded machine), so torch runs single-threaded here (``--threads`` to change)."""
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(old)


def _run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_b, horizon_b = _configure(args)
    torch.manual_seed(args.seed)
    snaps: dict[str, dict[str, Snapshot]] = {}
    lines = [
        f"rnnkit diagnose ({'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'fresh cells'})",
        "",
    ]
    power_w = None
    if args.checkpoint:
        opts = parse_variant(f"{args.family}:" + ",".join(args.option)).options
        v = Variant(args.family, args.family, {"num_layers": args.num_layers, **opts})
        rnn = load_weights(v.build(args.input_size, args.hidden_size), args.checkpoint)
        if args.input_size == 1:
            x, _ = synthetic.plus_one(args.batch, args.seq_len, seed=args.seed)
        else:
            g = torch.Generator().manual_seed(args.seed)
            x = torch.randn(args.batch, args.seq_len, args.input_size, generator=g)
        x = probe_sequence(x)
        snaps[v.label] = {"checkpoint": snapshot(rnn, x)}
        power_w = (v.label, rnn)
    else:
        variants = [parse_variant(s) for s in args.variants]
        x, _ = synthetic.plus_one(args.batch, args.seq_len, seed=args.seed + 1)
        x = probe_sequence(x)
        for v in variants:
            torch.manual_seed(args.seed)
            model = TaskModel(v.build(1, args.hidden_size), 2)
            snaps[v.label] = {"init": snapshot(model.rnn, x)}
            acc, _ = train_task(model, "plus_one", args.seq_len, train_b)
            snaps[v.label]["trained"] = snapshot(model.rnn, x, acc)
            if power_w is None or v.family.startswith("rnn") and not power_w[0].startswith("rnn"):
                power_w = (v.label, model.rnn)
    files = [
        plots.plot_gradient_flow(
            {m: {s: sn.flows for s, sn in per.items()} for m, per in snaps.items()}, out / "gradient_flow.png"
        ),  # fmt: skip
        plots.plot_jacobian(
            {m: {s: sn.spectrum for s, sn in per.items()} for m, per in snaps.items()},
            out / "jacobian_spectrum.png",
        ),  # fmt: skip
        plots.plot_eigenvalues(
            {m: {s: sn.eigenvalues for s, sn in per.items()} for m, per in snaps.items()},
            out / "eigenvalues.png",
        ),  # fmt: skip
    ]
    for m, per in snaps.items():
        name = "".join(ch if ch.isalnum() else "_" for ch in m)
        acts, inputs = {s: sn.activity for s, sn in per.items()}, {s: sn.inputs for s, sn in per.items()}
        files.append(plots.plot_activity(acts, out / f"activity_{name}.png", inputs=inputs, title=m))
    for m, per in snaps.items():
        for stage, sn in per.items():
            lines += _summary_lines(m, stage, sn)
    label, rnn = power_w
    blocks = recurrent_matrices(rnn)["l0"]
    block = "W_hh" if "W_hh" in blocks else next(iter(blocks))
    pi = power_iteration(blocks[block], steps=60, seed=args.seed)
    files.append(plots.plot_power_iteration(pi, out / "power_iteration.png", title=f"{label} {block}"))
    lines.append("")
    lines.append(
        f"power iteration on {label} {block}: λ₁ = {_fmt_complex(pi.eigenvalues[0])}, "
        f"|λ₂/λ₁| = {pi.rate:.3f}, sin∠ after {len(pi.angles) - 1} steps: {pi.angles[-1]:.2e}"
    )
    result = {"snapshots": {m: {s: _snap_json(sn) for s, sn in per.items()} for m, per in snaps.items()}}
    if not args.no_horizon and not args.checkpoint:
        hz = memory_horizon([parse_variant(s) for s in args.variants], budget=horizon_b)
        files.append(plots.plot_memory_horizon(hz, out / "memory_horizon.png"))
        lines += ["", f"memory horizon (≤ {horizon_b.steps} steps per lag, threshold {horizon_b.threshold}):",
                  hz.table()]  # fmt: skip
        result["memory_horizon"] = hz.to_dict()
    lines += ["", f"{len(files)} figures in {out}: " + ", ".join(Path(f).name for f in files),
              f"time {time.perf_counter() - t0:.1f} s"]  # fmt: skip
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text, encoding="utf-8")
    result["args"] = {k: v for k, v in vars(args).items() if not callable(v)}
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    print(text, end="")
    return 0


def _fmt_complex(z: complex) -> str:
    return f"{z.real:.3f}" if z.imag == 0 else f"{z:.3f}"


def _snap_json(sn: Snapshot) -> dict:
    return {
        "accuracy": sn.accuracy,
        "grad_norms": {
            k: {lb: {n: v.tolist() for n, v in d.items()} for lb, d in gf.norms.items()}
            for k, gf in sn.flows.items()
        },  # fmt: skip
        "per_step_factor": {k: gf.per_step_factor() for k, gf in sn.flows.items()},
        "jacobian_product_norms": sn.spectrum.product_norms.tolist(),
        "spectral_radius": {
            lb: {b: float(np.abs(ev).max()) for b, ev in blocks.items()}
            for lb, blocks in sn.eigenvalues.items()
        },  # fmt: skip
    }


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(
        argparse.ArgumentParser(prog="rnnkit diagnose", description=__doc__.split("\n\n")[0])
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rnnkit.diagnostics`` (and of ``rnnkit diagnose``)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        build_parser().error(str(e))
    return 2  # pragma: no cover - error() exits
