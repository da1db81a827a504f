"""The main job's learning curve: ``rnnkit train charlm`` on Shakespeare per wall-clock budget.

Runs the real command line once per budget (each run's learning-rate schedule spans its own
budget), then prints a table of the final validation loss (the whole 200,000-character
validation text, nats/char), the optimizer steps the budget allowed and, per run, the
validation points against training time. The training clock of ``rnnkit train charlm``
includes its periodic validations and checkpoints. A budget whose ``OUT/<m>min/results.json``
exists is not rerun: its finished run is read back (whatever flags it was run with; a notice
names it), so give each configuration its own ``--out``.

    python benchmarks/main_job_curve.py --minutes 3,9,30 --out runs/curve
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def read_curve(out: Path) -> tuple[float, int, list[tuple[float, float]]]:
    """(final valid nats/char, steps, [(training minutes, valid nats/char), ...]) of one run."""
    elapsed, points = {}, []
    from rnnkit.train import read_metrics  # strict JSON: a diverged loss is null + "nonfinite"

    for rec in read_metrics(out / "metrics.jsonl"):
        if rec.get("split") == "train":
            elapsed[rec["step"]] = rec["elapsed_s"]
        elif rec.get("split") == "val" and rec["step"] in elapsed:
            points.append((elapsed[rec["step"]] / 60, rec["loss"]))
    from rnnkit.cli.rundir import read_results  # strict JSON too

    results = read_results(out)
    return results["valid_nats_per_char"], results["step"], points


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", default="3,9,30")
    ap.add_argument("--out", default="runs/curve")
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("extra", nargs="*", help="more flags for `rnnkit train charlm` (after --)")
    args = ap.parse_args(argv)
    rows = []
    for m in [float(x) for x in args.minutes.split(",")]:
        out = Path(args.out) / f"{m:g}min"
        cmd = [sys.executable, "-m", "rnnkit", "train", "charlm", "--max-minutes", f"{m:g}"]
        cmd += ["--out", str(out), "--val-every", str(args.val_every), "--no-progress", *args.extra]
        if not (out / "results.json").exists():
            print("$", " ".join(cmd[1:]), flush=True)
            t0 = time.time()
            subprocess.run(cmd, check=True)
            print(f"  wall {time.time() - t0:.0f} s, load average {os.getloadavg()[0]:.2f}", flush=True)
        else:  # not this command's run, perhaps: other flags are not checked
            print(f"reusing the finished run in {out} (not rerun; delete it to rerun)", flush=True)
        rows.append((m, *read_curve(out)))
    # steps: what the budget bought (RESULTS.md's tables show them beside the loss)
    print(
        "\n| budget (min) | final valid nats/char | bits/char | steps "
        "| validation points (training min: nats) |"
    )
    print("|---:|---:|---:|---:|---|")
    for m, final, steps, points in rows:
        pts = ", ".join(f"{t:.1f}: {v:.3f}" for t, v in points)
        print(f"| {m:g} | {final:.3f} | {final / 0.6931471805599453:.3f} | {steps:,} | {pts} |")


if __name__ == "__main__":
    main()
