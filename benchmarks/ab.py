"""Interleaved A/B of two rnnkit source trees on one layer case of ``benchmarks/layers.py``.

A kernel change is judged against the tree before it, but this shared 2-core machine moves
between a quiet and a slow state within minutes (benchmarks/RESULTS.md): two runs an hour
apart do not compare. Here each round starts one process per tree, the trees' order
alternating, so a drift hits both alike; each process times the case's fused layer without
grad (``fwd``), as a forward that saves for backward (``save``) and as a training step
(``train``), and torch.nn's layer of the same family and shape (``torch fwd``, ``torch
train``: the round's state of the machine), each the median of ``--calls`` calls.

    python benchmarks/ab.py /tmp/base . --case lstm-batchnorm --shape medium --rounds 6
    MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_MMAP_THRESHOLD_=1073741824 nice -n -10 \\
        python benchmarks/ab.py /tmp/base . --threads 1

A tree is a checkout's root (``git worktree add /tmp/base HEAD``): the child process imports
rnnkit from it (and builds its extension on first use) and this tree's case definitions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

KEYS = ("fwd", "save", "train", "torch fwd", "torch train")


def child(case: str, shape: str, calls: int, threads: int) -> dict[str, float]:
    """Median ms of each of KEYS in this process (rnnkit from PYTHONPATH)."""
    import layers  # this tree's benchmarks/layers.py (the child runs with it on sys.path)
    import torch

    torch.set_num_threads(threads)
    family, kwargs = next((f, kw) for name, f, kw in layers.CASES if name == case)
    T, B, I, H = layers.SHAPES[shape]
    ours_cls, torch_cls = layers.FAMILIES[family]
    torch.manual_seed(0)
    ours = ours_cls(I, H, impl="fused", **kwargs).train()
    ref = torch_cls(I, H, **{k: v for k, v in kwargs.items() if k in layers.LAYOUT}).train()
    x = torch.randn(T, B, I)

    def fwd(m):
        with torch.no_grad():
            m(x)

    def train(m):
        m(x)[0].sum().backward()

    runs = {"fwd": lambda: fwd(ours), "save": lambda: ours(x), "train": lambda: train(ours)}
    runs |= {"torch fwd": lambda: fwd(ref), "torch train": lambda: train(ref)}
    out = {}
    for key, f in runs.items():
        for _ in range(3):  # warm-up: the extension, the allocator's pools
            f()
        ts = []
        for _ in range(calls):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        out[key] = statistics.median(ts) * 1e3
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trees", nargs="*", help="two source trees: A (the baseline) and B")
    p.add_argument("--case", default="lstm-batchnorm", help="a case name of benchmarks/layers.py")
    p.add_argument("--shape", default="medium", help="small, medium or large")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--calls", type=int, default=20, help="calls per median")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.case, a.shape, a.calls, a.threads)))
        return
    if len(a.trees) != 2:
        p.error(f"expected two trees (A B), got {len(a.trees)}: {a.trees}")
    trees = [Path(t).resolve() for t in a.trees]
    for t in trees:
        if not (t / "rnnkit" / "__init__.py").is_file():
            p.error(f"{t} is not an rnnkit source tree (no rnnkit/__init__.py)")
    args = ["--child", "--case", a.case, "--shape", a.shape, "--calls", str(a.calls)]
    args += ["--threads", str(a.threads)]
    rows: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    print(f"case {a.case}, shape {a.shape}, {a.threads} threads, median of {a.calls} calls, ms")
    print("| round | tree | " + " | ".join(KEYS) + " |\n|---|---|" + "---:|" * len(KEYS))
    for r in range(a.rounds):
        for name in "AB" if r % 2 == 0 else "BA":
            env = dict(os.environ, PYTHONPATH=str(trees[name == "B"]))
            res = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
            if res.returncode:
                sys.exit(f"tree {name} ({trees[name == 'B']}) failed:\n{res.stderr}")
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows[name].append(row)
            print(f"| {r} | {name} | " + " | ".join(f"{row[k]:.3f}" for k in KEYS) + " |", flush=True)
    for name in "AB":
        med = {k: statistics.median(x[k] for x in rows[name]) for k in KEYS}
        print(f"| median | {name} | " + " | ".join(f"{med[k]:.3f}" for k in KEYS) + " |")


if __name__ == "__main__":
    main()
