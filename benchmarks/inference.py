"""Inference speed of the standard layers: what ``impl="auto"`` picks against torch.nn.

For each family (RNN, LSTM, GRU) and shape of ``layers.py`` it times a forward pass under
``torch.no_grad()`` of ``torch.nn`` and of the rnnkit layer as users build it
(``impl="auto"``), on a padded batch and on a ``PackedSequence`` of the same batch with lengths
uniform in ``T/2..T`` (packing included in neither), interleaved, median of ``--repeat``;
the last column names the path ``impl="auto"`` took (rnnkit/dispatch.py).

    python benchmarks/inference.py --threads 2 --repeat 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from rnnkit import dispatch

try:
    from .layers import FAMILIES, SHAPES
except ImportError:  # run as a script
    from layers import FAMILIES, SHAPES


def _median_ms(models: dict, inp, repeat: int) -> dict[str, float]:
    """Interleaved medians of ``model(inp)``: each sample lasts at least ~20 ms (small calls run
    several times)."""
    with torch.no_grad():
        for m in models.values():
            m(inp)
        t0 = time.perf_counter()
        next(iter(models.values()))(inp)
        inner = max(1, int(0.02 / max(time.perf_counter() - t0, 1e-6)))
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(repeat):
            for k, m in models.items():
                t0 = time.perf_counter()
                for _ in range(inner):
                    m(inp)
                times[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args(argv)
    if unknown := [s for s in args.shapes.split(",") if s not in SHAPES]:
        ap.error(f"--shapes: unknown {', '.join(unknown)} (known: {', '.join(SHAPES)})")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, float32, no_grad forward, "
        f"median of {args.repeat}"
    )
    print("| family | shape | input | torch ms | rnnkit ms | rnnkit/torch | path |")
    print("|---|---|---|---:|---:|---:|---|")
    for shape in args.shapes.split(","):
        T, B, I, H = SHAPES[shape]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(T, B, I, generator=g)
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
        lengths[0] = T
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        for family, (ours_cls, torch_cls) in FAMILIES.items():
            torch.manual_seed(0)
            ours, ref = ours_cls(I, H), torch_cls(I, H)
            for name, inp in (("padded", x), ("packed", packed)):
                r = _median_ms({"torch": ref, "rnnkit": ours}, inp, args.repeat)
                path = dispatch.select(ours, inp.data if name == "packed" else inp, packed=name == "packed")
                print(f"| {family} | {shape} | {name} | {r['torch']:.2f} | {r['rnnkit']:.2f} | "
                      f"{r['rnnkit'] / r['torch']:.2f} | {path} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
