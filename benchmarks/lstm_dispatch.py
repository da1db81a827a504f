"""Where the fused LSTM trains faster than torch.nn.LSTM: the shape rule of ``impl="auto"``.

For a grid of batch sizes and hidden sizes (2 layers, T=100, input 64, float32) it times one
training step (forward + backward of ``output.sum()``) of ``torch.nn.LSTM`` (oneDNN's fused
LSTM on this build) and of ``rnnkit.LSTM(impl="fused")``, interleaved, and prints the ratio
beside what ``impl="auto"`` picks (rnnkit/dispatch.py)::

    python benchmarks/lstm_dispatch.py --batches 8,16,32,64 --hidden 128,256,384,512 --tune-malloc

Without ``--tune-malloc`` (``rnnkit.train.tune_malloc()``, as ``rnnkit train`` runs) glibc
mmaps torch's ~33 MiB LSTM workspace afresh every step at the medium shapes and the kernel
faults it in page by page: the comparison then measures the allocator, not the kernels.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rnnkit
from rnnkit import dispatch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="8,16,32,64")
    ap.add_argument("--hidden", default="128,256,384,512")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tune-malloc", action="store_true", help="rnnkit.train.tune_malloc() first")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.tune_malloc:
        from rnnkit.train import tune_malloc

        if not tune_malloc():
            raise SystemExit("tune_malloc() is not available here (no glibc mallopt)")
    T, I, L = args.steps, args.input, args.layers
    print(f"torch {torch.__version__}, {args.threads} threads, float32, {L} layers, T={T}, I={I}, median of "
          f"{args.repeat}, wall clock, tune_malloc {'on' if args.tune_malloc else 'off'}")  # fmt: skip
    print("| B | H | torch train ms | fused train ms | fused/torch | auto picks |")
    print("|---:|---:|---:|---:|---:|---|")
    for B in map(int, args.batches.split(",")):
        for H in map(int, args.hidden.split(",")):
            torch.manual_seed(0)
            models = {"torch": torch.nn.LSTM(I, H, L), "fused": rnnkit.LSTM(I, H, L, impl="fused")}
            x = torch.randn(T, B, I)

            def train(m, x=x):
                xr = x.detach().requires_grad_(True)
                m(xr)[0].sum().backward()
                m.zero_grad(set_to_none=True)

            for m in models.values():  # warm-up
                train(m)
                train(m)
            times: dict[str, list[float]] = {k: [] for k in models}
            for _ in range(args.repeat):
                for k, m in models.items():
                    t0 = time.perf_counter()
                    train(m)
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            auto = rnnkit.LSTM(I, H, L)
            picks = dispatch.select(auto, x.requires_grad_())
            row = f"| {B} | {H} | {med['torch']:.2f} | {med['fused']:.2f} | {med['fused'] / med['torch']:.3f}"
            print(f"{row} | {picks} |", flush=True)


if __name__ == "__main__":
    main()
