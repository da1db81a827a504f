"""Two of issue 8's targets that `layers.py` does not measure: packed vs padded input, and the
peak memory of a training step.

* **Packed vs padded** — ``B = 32`` sequences of lengths uniform in 50–150 (``total`` tokens)
  as a ``PackedSequence``, against a dense batch of the same total tokens (``32 × ⌈total/32⌉``),
  one training step (forward + backward of the output's sum, the input's gradient included),
  for torch.nn and rnnkit's fused path, interleaved, median of ``--repeat``. Two packed
  columns: the step with ``pack_padded_sequence(enforce_sorted=False)`` and its backward in it
  (a padded batch packed in the step), and the layer alone on input packed once outside the
  step (as a data pipeline packs token ids and an embedding runs on the packed ``.data``;
  ``rnnkit.data``'s ``PaddedBatch.packed``), its data requiring a gradient as an embedding's
  output would. And for rnnkit, the padded batch of those sequences with ``lengths=``, which
  the layer packs and pads back itself (``rnnkit/padded.py``).
* **Peak memory** — extra peak RSS of one training step at the medium shape (T=100, B=32,
  I=128, H=256), each contestant in a fresh process warmed up by a 2-step call (libraries,
  kernels, packed weights loaded) so that the measured step allocates its working set anew
  (a warm-up at full size would leave it in the heap's free lists); the high-water mark is
  reset through ``/proc/self/clear_refs`` (Linux); the median of ``--mem-repeat`` fresh
  processes (with 2 threads torch's GRU and RNN read up to 16% apart from one to the next).

    python benchmarks/packed_memory.py --threads 2 --repeat 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit

try:
    from ._rss import peak_rss_mib
except ImportError:  # run as a script
    from _rss import peak_rss_mib

B, I, H = 32, 128, 256
FAMILIES = {"lstm": (nn.LSTM, rnnkit.LSTM), "gru": (nn.GRU, rnnkit.GRU), "rnn": (nn.RNN, rnnkit.RNN)}


def make(family: str, who: str) -> nn.Module:
    torch_cls, ours = FAMILIES[family]
    return torch_cls(I, H) if who == "torch" else ours(I, H, impl=who)


def step_fn(m: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None):
    def run() -> None:
        xr = x.detach().requires_grad_(True)
        inp = xr if lengths is None else pack_padded_sequence(xr, lengths, enforce_sorted=False)
        out = m(inp)[0]
        (out.data if lengths is not None else out).sum().backward()
        m.zero_grad(set_to_none=True)

    return run


def layer_fn(m: nn.Module, packed: PackedSequence):
    """The layer alone on input packed outside the step: a fresh leaf for its data each call."""

    def run() -> None:
        inp = packed._replace(data=packed.data.detach().requires_grad_(True))
        m(inp)[0].data.sum().backward()
        m.zero_grad(set_to_none=True)

    return run


def lengths_fn(m: nn.Module, x: torch.Tensor, lengths: torch.Tensor):
    """rnnkit's ``lengths=`` on the padded batch (the layer packs and pads back inside)."""

    def run() -> None:
        m(x.detach().requires_grad_(True), lengths=lengths)[0].sum().backward()
        m.zero_grad(set_to_none=True)

    return run


def packed_vs_padded(repeat: int) -> None:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(50, 151, (B,), generator=g)
    total = int(lengths.sum())
    x_packed = torch.randn(int(lengths.max()), B, I, generator=g)
    x_dense = torch.randn(-(-total // B), B, I, generator=g)
    print(f"\npacked: {B} sequences, lengths 50-150, {total} tokens; padded: {x_dense.shape[0]}x{B} = "
          f"{x_dense.shape[0] * B} tokens; training step, median of {repeat}")  # fmt: skip
    print(
        "| family | contestant | packed ms (packing in the step) | packed ms (layer alone) | lengths= ms "
        "| padded ms | packed/padded | layer alone packed/padded | lengths=/padded |"
        "\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    packed_once = pack_padded_sequence(x_packed, lengths, enforce_sorted=False)
    for family in FAMILIES:
        for who in ("torch", "fused"):
            torch.manual_seed(0)
            m = make(family, who)
            fns = {
                "packed": step_fn(m, x_packed, lengths),
                "layer": layer_fn(m, packed_once),
                "padded": step_fn(m, x_dense, None),
            }
            if who != "torch":  # torch.nn has no lengths=
                fns["lengths"] = lengths_fn(m, x_packed, lengths)
            for f in fns.values():
                f()
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(repeat):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append(time.perf_counter() - t0)
            ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            p, q, d, n = ms["packed"], ms["layer"], ms["padded"], ms.get("lengths")
            cols = [f"{p:.1f}", f"{q:.1f}", "-" if n is None else f"{n:.1f}", f"{d:.1f}", f"{p / d:.2f}"]
            cols += [f"{q / d:.2f}", "-" if n is None else f"{n / d:.2f}"]
            print(f"| {family} | {who} | " + " | ".join(cols) + " |", flush=True)


def peak_memory(family: str, who: str, threads: int, repeat: int = 1) -> float:
    setup = (
        f"import torch;import benchmarks.packed_memory as s;torch.set_num_threads({threads});"
        f"torch.manual_seed(0);m=s.make({family!r},{who!r});s.step_fn(m,torch.randn(2,s.B,s.I),None)();"
        "x=torch.randn(100,s.B,s.I);f=s.step_fn(m,x,None)"
    )
    return peak_rss_mib(setup, "f()", repeat)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--mem-repeat", type=int, default=5, help="fresh processes per memory reading (median)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, wall clock")
    packed_vs_padded(args.repeat)
    print(
        "\npeak memory of one training step, T=100, B=32, I=128, H=256 (extra peak RSS, MiB, "
        f"median of {args.mem_repeat} processes)"
    )
    print("| family | torch.nn | rnnkit fused | rnnkit loop | fused/torch |\n|---|---:|---:|---:|---:|")
    for family in FAMILIES:
        t, f, lp = (peak_memory(family, w, args.threads, args.mem_repeat) for w in ("torch", "fused", "loop"))
        print(f"| {family} | {t:.1f} | {f:.1f} | {lp:.1f} | {f / t:.2f} |", flush=True)


if __name__ == "__main__":
    main()
