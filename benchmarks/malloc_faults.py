"""Page faults per training step, with glibc's default malloc settings and with
``rnnkit.train.tune_malloc()`` (each in a fresh process, since the setting is process-wide).

For each layer (T=100, B=32, I=128, H=256, float32) one training step (forward + backward of
``output.sum()``), interleaved over rounds; prints the median step time and minor page faults::

    python benchmarks/malloc_faults.py --repeat 9
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

LAYERS = {
    "torch.nn.LSTM": ("torch", {}),
    "rnnkit LSTM (fused)": ("lstm", {"impl": "fused"}),
    "rnnkit LSTM zoneout": ("lstm", {"zoneout": 0.1}),
    "rnnkit LSTM layer norm": ("lstm", {"norm": "layer"}),
    "rnnkit LSTM batch norm": ("lstm", {"norm": "batch"}),
    "rnnkit GRU (fused)": ("gru", {"impl": "fused"}),
}


def measure(tuned: bool, repeat: int, threads: int) -> dict[str, tuple[float, float]]:
    import torch

    import rnnkit
    from rnnkit.train import tune_malloc

    torch.set_num_threads(threads)
    if tuned and not tune_malloc():
        raise SystemExit("tune_malloc() is not available here (no glibc mallopt)")
    T, B, I, H = 100, 32, 128, 256
    torch.manual_seed(0)
    x = torch.randn(T, B, I)
    models = {}
    for name, (fam, kw) in LAYERS.items():
        models[name] = (
            torch.nn.LSTM(I, H)
            if fam == "torch"
            else {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU}[fam](I, H, **kw)
        )

    def step(m):
        xr = x.detach().requires_grad_(True)
        m(xr)[0].sum().backward()
        m.zero_grad(set_to_none=True)

    for m in models.values():
        step(m)
        step(m)
    res: dict[str, list[tuple[float, int]]] = {k: [] for k in models}
    for _ in range(repeat):
        for k, m in models.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            step(m)
            dt = time.perf_counter() - t0
            res[k].append((dt, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0))
    return {
        k: (statistics.median(t for t, _ in v) * 1e3, statistics.median(f for _, f in v))
        for k, v in res.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=("default", "tuned"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child == "tuned", args.repeat, args.threads)))
        return
    out = {}
    for mode in ("default", "tuned"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            mode,
            "--repeat",
            str(args.repeat),
            "--threads",
            str(args.threads),
        ]
        out[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    print(f"{args.threads} threads, one training step, T=100 B=32 I=128 H=256, median of {args.repeat}")
    print("| layer | default ms | default faults | tuned ms | tuned faults | tuned/default |")
    print("|---|---:|---:|---:|---:|---:|")
    for k in LAYERS:
        (a, fa), (b, fb) = out["default"][k], out["tuned"][k]
        print(f"| {k} | {a:.2f} | {fa:.0f} | {b:.2f} | {fb:.0f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
