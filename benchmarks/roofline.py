"""Arithmetic bounds of two speed targets of the fused path, against this machine's GEMM peak.

A training step of an LSTM layer (T steps, batch B, input I, hidden H, G = 4H gate rows,
N = T B rows) is dominated by six GEMMs of the same size class:

    forward   x W_ihᵀ (2 N I G)    h W_hhᵀ (2 N H G)
    backward  dx = da W_ih (2 N G I)   dW_ih = daᵀ x (2 N G I)
              dh = da W_hh (2 N G H)   dW_hh = daᵀ h (2 N G H)

so 6 N G (I + H) floating-point operations, whatever the implementation (element-wise work
and the sequential dependence only add to the time). Greff's full gate recurrence (FGR) adds
``weight_gg (3H, 3H)`` to every step's recurrent GEMM: 6 N (G I + 13 H²) for training.

The script measures the sustained float32 GEMM rate of this machine (oneDNN and torch.mm, on
large square matrices and on the LSTM's weight-gradient shape, best of several runs) and
torch.nn.LSTM's training step, then prints what each target would need:

* "standard LSTM training >= 1.3x faster than torch.nn.LSTM": the time left, 1/1.3 of
  torch's, against the time the GEMMs alone take at the measured peak;
* "FGR <= 1.25x torch.nn.LSTM": FGR's GEMMs alone at peak, against 1.25x torch's LSTM step.

    MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_MMAP_THRESHOLD_=1073741824 \\
        python benchmarks/roofline.py --shapes small,medium,large
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

SHAPES = {"small": (64, 8, 32, 64), "medium": (100, 32, 128, 256), "large": (100, 64, 512, 512)}


def _best_rate(fn, flops: float, repeat: int) -> float:
    """Best GFLOP/s of ``fn`` over ``repeat`` samples of >= ~50 ms each."""
    fn()
    t0 = time.perf_counter()
    fn()
    inner = max(1, int(0.05 / max(time.perf_counter() - t0, 1e-6)))
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = max(best, flops * inner / (time.perf_counter() - t0) / 1e9)
    return best


def gemm_peak(repeat: int) -> dict[str, float]:
    """Sustained float32 GEMM GFLOP/s, through oneDNN with a prepacked weight (what torch's
    LSTM and rnnkit's kernels run on; MKL's sgemm behind ``torch.mm`` reaches less than half
    of it on AMD CPUs) and through ``torch.mm``: large square, and dW_hh's shape at medium."""
    out = {}
    onednn = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    for name, (m, k, n) in {"2048^3": (2048, 2048, 2048), "1024x3200x256": (1024, 3200, 256)}.items():
        a, w = torch.randn(m, k), torch.randn(n, k)
        out[f"mm {name}"] = _best_rate(lambda a=a, w=w: torch.mm(a, w.t()), 2.0 * m * k * n, repeat)
        if onednn:
            pw = torch.ops.mkldnn._reorder_linear_weight(w, m)
            fn = lambda a=a, pw=pw: torch.ops.mkldnn._linear_pointwise(a, pw, None, "none", [], "")  # noqa: E731
            out[f"oneDNN {name}"] = _best_rate(fn, 2.0 * m * k * n, repeat)
    return out


def lstm_train_ms(shape: tuple[int, int, int, int], repeat: int) -> float:
    T, B, I, H = shape
    torch.manual_seed(0)
    m, x = nn.LSTM(I, H), torch.randn(T, B, I)

    def step():
        xr = x.detach().requires_grad_(True)
        m(xr)[0].sum().backward()
        m.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    step()
    inner = max(1, int(0.05 / (time.perf_counter() - t0)))
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        samples.append((time.perf_counter() - t0) / inner * 1e3)
    return statistics.median(samples)


def train_flops(shape: tuple[int, int, int, int], fgr: bool = False) -> float:
    T, B, I, H = shape
    N, G = T * B, 4 * H
    return 6.0 * N * (G * I + (13 * H * H if fgr else G * H))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="small,medium,large")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    if unknown := [s for s in filter(None, args.shapes.split(",")) if s not in SHAPES]:
        ap.error(f"--shapes: unknown {', '.join(unknown)} (known: {', '.join(SHAPES)})")
    torch.set_num_threads(args.threads)
    peaks = gemm_peak(args.repeat)
    peak = max(peaks.values())
    print(f"torch {torch.__version__}, {args.threads} threads, float32")
    print("sustained GEMM GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    print(f"peak used below: {peak:.0f} GFLOP/s (the best of these)")
    print()
    print(
        "| shape | LSTM train GFLOP | torch ms | torch GFLOP/s | GEMMs at peak ms | 1.3x target ms "
        "| needs GFLOP/s (of peak) | FGR train GFLOP | FGR at peak ms | 1.25x torch ms "
        "| FGR needs GFLOP/s (of peak) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in filter(None, args.shapes.split(",")):
        shape = SHAPES[name]
        f, ff = train_flops(shape), train_flops(shape, fgr=True)
        t = lstm_train_ms(shape, args.repeat)
        need, need_fgr = f / (t / 1.3) / 1e6, ff / (1.25 * t) / 1e6  # GFLOP/s the targets ask for
        print(
            f"| {name} | {f / 1e9:.2f} | {t:.2f} | {f / t / 1e6:.0f} | {f / peak / 1e6:.2f} | {t / 1.3:.2f} "
            f"| {need:.0f} ({need / peak:.0%}) | {ff / 1e9:.2f} | {ff / peak / 1e6:.2f} "
            f"| {1.25 * t:.2f} | {need_fgr:.0f} ({need_fgr / peak:.0%}) |"
        )


if __name__ == "__main__":
    main()
