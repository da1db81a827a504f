"""``rnnkit diagnose``: PNGs and a text summary of gradient flow, spectrum, activity and
memory horizon, for freshly initialized cells (default) or for a checkpoint.

Default mode: RNN vs LSTM vs GRU (or ``--variants``), each at initialization and after a
short training on the "+1 detection" task, then the memory-horizon benchmark. With
``--checkpoint DIR``: one layer, described by the ``run.json`` of the training run (or by
``--cell/--input-size/--hidden-size/...``, which override it), gets the checkpoint's
weights (:func:`load_weights`) and is diagnosed as it is. Every family works, the
time-parallel ``mingru``, ``minlstm``, ``qrnn`` and ``lru`` included.
The CLI calls :func:`add_arguments` and :func:`run`; ``python -m rnnkit.diagnostics``
calls :func:`main`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..datasets import synthetic
from ..train.evaluate import kept_modes
from ..train.outdir import not_a_directory
from . import plots
from .activity import LayerActivity, activity
from .checkpoint import checkpoint_layer
from .gradient_flow import GradientFlow, gradient_flow
from .memory import Budget, TaskModel, check_labels, lags_ok, memory_horizon, parse_variant, train_task
from .parallel import DecaySpectrum, decay_spectrum, is_parallel
from .spectrum import (
    JacobianSpectrum,
    jacobian_spectrum,
    power_iteration,
    recurrent_eigenvalues,
    recurrent_matrices,
)
from .summary import write_summary, write_text_atomic


@dataclass
class Snapshot:
    """All diagnostics of one model at one stage."""

    flows: dict[str, GradientFlow]
    spectrum: JacobianSpectrum
    eigenvalues: dict[str, dict[str, np.ndarray]]
    activity: list[LayerActivity]
    inputs: np.ndarray
    accuracy: float | None = None
    decay: DecaySpectrum | None = None


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
    ``x``; activity for its first sequence (see :func:`probe_sequence`). Measured in
    evaluation mode (no dropout or zoneout masks, as in checkpoint mode); the mode is restored."""
    with kept_modes(rnn):  # each module's own mode back (a frozen batch norm stays in eval)
        return _snapshot(rnn.eval(), x, accuracy)


def _snapshot(rnn: nn.Module, x: torch.Tensor, accuracy: float | None) -> Snapshot:
    xt = x if rnn.batch_first else x.transpose(0, 1)
    decay = decay_spectrum(rnn, xt) if is_parallel(rnn) else None
    if decay is None or decay.name == "λ":
        eigenvalues = recurrent_eigenvalues(rnn)
    else:  # data-dependent decays of the first sequence: the step Jacobians' eigenvalues
        eigenvalues = {lb: {f"a_t = {decay.name}": a[:, 0].ravel()} for lb, a in decay.decays.items()}
    return Snapshot(
        flows={k: gradient_flow(rnn, xt, loss=k) for k in ("last", "per_step")},
        spectrum=jacobian_spectrum(rnn, xt, sample=0),
        eigenvalues=eigenvalues,
        activity=activity(rnn, xt, sample=0),
        inputs=x[0].double().numpy(),
        accuracy=accuracy,
        decay=decay,
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``rnnkit diagnose``."""
    a = parser.add_argument
    a("--out", default="diagnostics", help="output directory for the PNGs and summary (default: %(default)s)")
    a(
        "--variants",
        nargs="+",
        default=None,
        help="cells to compare: family[:key=value,...] or label=family:key=value; families rnn, rnn_relu, "
        "lstm, gru, mingru, minlstm, qrnn, lru (default: rnn lstm gru)",
    )
    a("--cell", "--arch", "--family", dest="family", default=None, metavar="CELL",
      help="one family to diagnose (the same as --variants CELL); in checkpoint mode the checkpoint's "
      "family (default: from its run.json, else lstm)")  # fmt: skip
    # rnnkit train's spellings (--hidden, --layers, --opt) are aliases, not argparse prefixes
    a(
        "--hidden-size",
        "--hidden",
        dest="hidden_size",
        type=int,
        default=None,
        help="hidden units (default: 16, or the checkpoint's run.json)",
    )
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
    a("--seed", type=int, default=0, help="seeds the models and data (default: 0)")
    a("--threads", type=int, default=1, help="torch intra-op threads (default: %(default)s)")
    a("--quick", action="store_true", help="tiny sizes and budgets (a smoke test of a few seconds)")
    g = parser.add_argument_group("checkpoint mode")
    g.add_argument("--checkpoint", default=None, help="checkpoint dir/root or .safetensors file to diagnose")
    g.add_argument("--input-size", type=int, default=None,
                   help="input features (default: read off the checkpoint's weights)")  # fmt: skip
    g.add_argument("--num-layers", "--layers", dest="num_layers", type=int, default=None,
                   help="(default: run.json's, else 1)")  # fmt: skip
    g.add_argument("--option", "--opt", dest="option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword of the layer (cell or layer option), repeatable")  # fmt: skip
    return parser


def _configure(args) -> tuple[Budget, Budget]:
    """(training budget of the +1 run, memory-horizon budget); a ValueError names a bad flag."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if why := not_a_directory(args.out):  # (mkdir's "File exists" or "Not a directory": no flag named)
        raise ValueError(f"--out {args.out} {why}")
    # numpy's generators refuse a negative seed (after the training and figures, unnamed), torch one
    # of 2**64 or more (seeds derived from it are reduced modulo 2**64)
    if not 0 <= args.seed < 2**64:
        raise ValueError(f"--seed must be an integer in [0, 2**64), got {args.seed}")
    if args.family and args.checkpoint:  # (a run.json's cell is checked at load: a failure, not a flag)
        from .memory import FAMILIES

        if args.family.lower().removeprefix("conv-") not in FAMILIES:
            raise ValueError(f"--cell must be one of {sorted(FAMILIES)}, got {args.family!r}")
    if args.family and args.variants and not args.checkpoint:
        raise ValueError(f"give --cell or --variants, not both (got --cell {args.family} and --variants)")
    # both spellings: args does not say which one was typed (rnnkit train's are --layers, --opt)
    flags = (("--num-layers (--layers)", args.num_layers), ("--input-size", args.input_size),
             ("--option (--opt)", args.option))  # fmt: skip
    described = [f for f, v in flags if v]
    if described and not args.checkpoint:  # (they were ignored: one-layer cells were diagnosed)
        raise ValueError(
            f"{', '.join(described)} describe a --checkpoint's layer; without one, give the cells' options "
            "in --variants, e.g. --variants lstm:num_layers=2,zoneout=0.1"
        )
    if not args.checkpoint:
        args.variants = args.variants or ([args.family] if args.family else ["rnn", "lstm", "gru"])
    if args.hidden_size is None and not args.checkpoint:
        args.hidden_size = 16
    if args.quick and not args.checkpoint:
        args.hidden_size = min(args.hidden_size, 6)
    if args.quick:
        args.seq_len, args.batch = min(args.seq_len, 12), min(args.batch, 4)  # (caps, as for the steps)
        args.train_steps = min(args.train_steps, 20)
    counts = ("hidden_size", "seq_len", "batch", "train_steps", "input_size", "num_layers", "horizon_steps")
    for name in counts:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    train = Budget(hidden_size=args.hidden_size or 16, steps=args.train_steps, lr=5e-3, threshold=0.99,
                   seed=args.seed)  # fmt: skip
    lags = tuple(args.lags) if args.lags else ((3, 6) if args.quick else (5, 10, 20, 40, 80))
    if not lags_ok(lags):  # memory_horizon's rule, before any training
        raise ValueError(f"--lags must be increasing positive ints, got {' '.join(map(str, lags))}")
    steps = args.horizon_steps if args.horizon_steps is not None else (20 if args.quick else 400)
    horizon = Budget(hidden_size=8 if args.quick else 32, steps=steps, eval_every=10 if args.quick else 50,
                     eval_size=64 if args.quick else 256, lags=lags, n_copy=2, seed=args.seed)  # fmt: skip
    # a bad family or option: before any training, at the widths it will be built with (one unit
    # refused every proj_size, which must be smaller than the width)
    widths = {train.hidden_size} | (set() if args.no_horizon else {horizon.hidden_size})
    variants = [] if args.checkpoint else [parse_variant(spec) for spec in args.variants]
    check_labels(variants)  # (snapshots and horizon are keyed by label: one would replace the other)
    for v in variants:
        for width in sorted(widths):
            v.build(1, width)
    return train, horizon


def _summary_lines(label: str, stage: str, snap: Snapshot) -> list[str]:
    gf = snap.flows["last"]
    top = [lb for lb in gf.labels if not gf.reverse[lb]][-1]
    st = gf.state(top)
    n = gf.norms[top][st]
    rho = {layer: max((float(np.abs(ev).max()) for ev in blocks.values()), default=float("nan"))
           for layer, blocks in snap.eigenvalues.items()}  # fmt: skip
    acc = "" if snap.accuracy is None else f"  +1 accuracy {snap.accuracy:.3f}"
    lines = [
        f"{label:>8} {stage:>10}:{acc}",
        f"{'':>20}loss at last step ({top}): ‖∂L/∂{st}_0‖/‖∂L/∂{st}_T-1‖ = {_ratio(n, st)}, "
        f"per-step factor {gf.per_step_factor():.3f}",
        f"{'':>20}step Jacobian ({gf.labels[0]}, sequence 0): "
        f"mean σ_max {snap.spectrum.singular_values[:, 0].mean():.3f}, "
        f"‖J_T-1⋯J_0‖ = {snap.spectrum.product_norms[-1]:.3g}",
    ]
    if snap.decay is None or snap.decay.name == "λ":
        lines.append(f"{'':>20}spectral radius of the recurrent blocks: "
                     + ", ".join(f"{k} {v:.3f}" for k, v in rho.items()))  # fmt: skip
    if snap.decay is not None:  # the diagonal recurrences: the distribution of a_t is the spectrum
        d = snap.decay
        q = d.modulus_quantiles(d.labels[0])
        tau = np.median(d.timescales(d.labels[0]))
        lines.append(f"{'':>20}decay a_t = {d.name} ({d.labels[0]}): |a| 5/50/95% {q[0]:.3f}/{q[1]:.3f}/"
                     f"{q[2]:.3f}, median memory time −1/log|a| {tau:.3g} steps")  # fmt: skip
    if "c" in gf.norms[top] and st != "c":
        c = gf.norms[top]["c"]
        lines.append(f"{'':>20}cell state: ‖∂L/∂c_0‖/‖∂L/∂c_T-1‖ = {_ratio(c, 'c')}")
    return lines


def _ratio(norms: np.ndarray, state: str) -> str:
    """``norms[0] / norms[-1]``; ``n/a`` when the last norm is zero (with zoneout the last cell
    state, mixed after its output was taken, does not reach a loss at the last step: it was a
    divide-by-zero RuntimeWarning and ``inf``)."""
    if norms[-1] == 0:
        return f"n/a (‖∂L/∂{state}_T-1‖ = 0)"
    return f"{norms[0] / norms[-1]:.3g}"


def run(args: argparse.Namespace) -> int:
    """Run ``rnnkit diagnose`` with parsed ``args``; writes into ``args.out``. Returns 0. A bad
    flag (value) is a usage error (:class:`rnnkit.cli.CLIError`, exit status 2, as argparse's).

    The models are tiny: intra-op threads only add synchronization (10x slower on a
    loaded machine), so torch runs single-threaded here (``--threads`` to change). ``--seed``
    seeds torch's generator for the run only: the caller's random state is restored after it."""
    from rnnkit.cli import CLIError

    with torch.random.fork_rng(devices=[]):  # the models and data are on the CPU
        try:
            budgets = _configure(args)  # (first: a bad flag leaves no --out directory; builds models)
        except ValueError as e:
            raise CLIError(f"diagnose: {e} (see rnnkit diagnose --help)", code=2) from None
        old = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        try:
            return _run(args, *budgets)
        finally:
            torch.set_num_threads(old)


def _run(args: argparse.Namespace, train_b: Budget, horizon_b: Budget) -> int:
    t0 = time.perf_counter()
    out = Path(args.out)
    # the CPU's generator only: torch.manual_seed reseeds the CUDA ones too, which run()'s fork
    # does not restore (the models and data are on the CPU)
    torch.default_generator.manual_seed(args.seed)
    snaps: dict[str, dict[str, Snapshot]] = {}
    lines = [
        f"rnnkit diagnose ({'checkpoint ' + str(args.checkpoint) if args.checkpoint else 'fresh cells'})",
        "",
    ]
    power_w = None
    # --out only once the checkpoint was read: a mistyped --checkpoint leaves no empty directory
    loaded = checkpoint_layer(args) if args.checkpoint else None
    out.mkdir(parents=True, exist_ok=True)
    if loaded is not None:
        v, rnn, note = loaded
        lines.insert(1, note)
        if rnn.input_size == 1:
            x, _ = synthetic.plus_one(args.batch, args.seq_len, seed=args.seed)
        else:
            g = torch.Generator().manual_seed(args.seed)
            x = torch.randn(args.batch, args.seq_len, rnn.input_size, generator=g)
        x = probe_sequence(x.to(next(rnn.parameters()).dtype))
        snaps[v.label] = {"checkpoint": snapshot(rnn, x)}
        power_w = None if is_parallel(rnn) else (v.label, rnn)
    else:
        variants = [parse_variant(s) for s in args.variants]
        x, _ = synthetic.plus_one(args.batch, args.seq_len, seed=args.seed + 1)
        x = probe_sequence(x)
        for v in variants:
            torch.default_generator.manual_seed(args.seed)
            model = TaskModel(v.build(1, args.hidden_size), 2)
            snaps[v.label] = {"init": snapshot(model.rnn, x)}
            acc, _ = train_task(model, "plus_one", args.seq_len, train_b)
            snaps[v.label]["trained"] = snapshot(model.rnn, x, acc)
            if is_parallel(model.rnn):  # no recurrent matrix to iterate
                continue
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
    names = activity_file_names(list(snaps))
    for m, per in snaps.items():
        acts, inputs = {s: sn.activity for s, sn in per.items()}, {s: sn.inputs for s, sn in per.items()}
        files.append(plots.plot_activity(acts, out / names[m], inputs=inputs, title=m))
    for m, per in snaps.items():
        for stage, sn in per.items():
            lines += _summary_lines(m, stage, sn)
    lines.append("")
    if power_w is None:
        lines.append("power iteration: skipped (a diagonal recurrence has no recurrent matrix to iterate)")
    else:
        label, rnn = power_w
        blocks = recurrent_matrices(rnn)["l0"]
        block = "W_hh" if "W_hh" in blocks else next(iter(blocks))
        pi = power_iteration(blocks[block], steps=60, seed=args.seed)
        files.append(plots.plot_power_iteration(pi, out / "power_iteration.png", title=f"{label} {block}"))
        lines.append(
            f"power iteration on {label} {block}: λ₁ = {_fmt_complex(pi.eigenvalues[0])}, "
            f"|λ₂/λ₁| = {pi.rate:.3f}, sin∠ after {len(pi.angles) - 1} steps: {pi.angles[-1]:.2e}"
        )
    result = {"snapshots": {m: {s: _snap_json(sn) for s, sn in per.items()} for m, per in snaps.items()},
              "activity_files": names}  # fmt: skip
    if not args.no_horizon and not args.checkpoint:
        hz = memory_horizon([parse_variant(s) for s in args.variants], budget=horizon_b)
        files.append(plots.plot_memory_horizon(hz, out / "memory_horizon.png"))
        lines += ["", f"memory horizon (≤ {horizon_b.steps} steps per lag, threshold {horizon_b.threshold}):",
                  hz.table()]  # fmt: skip
        result["memory_horizon"] = hz.to_dict()
    lines += ["", f"{len(files)} figures in {out}: " + ", ".join(Path(f).name for f in files),
              f"time {time.perf_counter() - t0:.1f} s"]  # fmt: skip
    text = "\n".join(lines) + "\n"
    write_text_atomic(text, out / "summary.txt")  # as summary.json: a crash leaves the old or the new file
    result["args"] = {k: v for k, v in vars(args).items() if not callable(v)}
    write_summary(result, out / "summary.json")  # strict JSON: a NaN is null and named in "nonfinite"
    print(text, end="")
    return 0


def activity_file_names(labels: list[str]) -> dict[str, str]:
    """``label -> "activity_{label}.png"``, the label's non-alphanumerics as ``_``; a name
    already taken (``a.b`` after ``a_b``, ``LSTM`` after ``lstm``) gets ``_2``, ``_3``, ... so no
    figure overwrites another (``summary.json``'s ``activity_files`` maps labels to files)."""
    names: dict[str, str] = {}
    for m in labels:
        base = "activity_" + "".join(ch if ch.isalnum() else "_" for ch in m)
        name, i = base, 1
        while name.lower() in {n.lower() for n in names.values()}:  # case-insensitive file systems too
            i += 1
            name = f"{base}_{i}"
        names[m] = name
    return {m: f"{n}.png" for m, n in names.items()}


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
        "decay_modulus_quantiles": None
        if sn.decay is None
        else {
            lb: sn.decay.modulus_quantiles(lb).tolist() for lb in sn.decay.labels
        },  # 5 / 50 / 95 % of |a_t| (the parallel layers)
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m rnnkit.diagnostics``: exactly ``rnnkit diagnose ARGS`` (the same
    parser and one-line errors; exit status 2 for a usage error, 1 for a failure)."""
    import sys

    from rnnkit.cli import _run as run_cli

    return run_cli(["diagnose", *(sys.argv[1:] if argv is None else argv)])
