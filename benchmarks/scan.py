"""Time-parallel layers vs torch.nn.LSTM/GRU, their own step loop and their GEMM floor.

One training step (forward + backward of ``output.sum()``) of one layer, B = 16,
H_in = H = 256, float32, for T in 128 ... 8192. Contestants, interleaved round by round (a
round runs every contestant once; the median over rounds is reported, so slow drifts of a
shared machine hit all alike):

* ``mingru``, ``minlstm``, ``qrnn`` (window 2), ``lru`` — the rnnkit layers;
* ``<layer>-loop`` — the same layer driven by its own ``step`` loop (what a sequential
  implementation costs); ``<layer>-floor`` — its GEMMs alone (input projection, and the
  LRU's readout), forward and backward: no layer can beat it;
* ``nn.LSTM``, ``nn.GRU`` — torch's fused recurrent layers of the same width.

Slow contestants stop early: ``nn.*`` at ``--slow-max-t``, step loops at ``--loop-max-t``.
Also measured at T = 1024: the scan's forward against one elementwise pass over the same
tensors (``torch.addcmul(b, a, b)``), and each contestant's peak memory (extra peak RSS
of a fresh process for one training step, warmed up at T = 2).

    python benchmarks/scan.py                         # full sweep, writes benchmarks/scan.png
    python benchmarks/scan.py --device cuda           # on a GPU: benchmarks/scan_cuda.png
    python benchmarks/scan.py --ts 1024 --repeat 9    # the headline ratios only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import rnnkit
from rnnkit.ops import backend, linear_scan

try:
    from ._rss import peak_rss_mib
except ImportError:  # run as a script
    from _rss import peak_rss_mib

B, I, H = 16, 256, 256
DEVICE = torch.device("cpu")  # --device; every module and tensor is made here


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


LAYERS = {
    "mingru": lambda: rnnkit.MinGRU(I, H),
    "minlstm": lambda: rnnkit.MinLSTM(I, H),
    "qrnn": lambda: rnnkit.QRNN(I, H, window=2),
    "lru": lambda: rnnkit.LRU(I, H),
}
TORCH = {"nn.LSTM": lambda: nn.LSTM(I, H), "nn.GRU": lambda: nn.GRU(I, H)}
FLOOR_SHAPES = {  # (in features, out features) of each GEMM of one layer
    "mingru": [(I, 2 * H)],
    "minlstm": [(I, 3 * H)],
    "qrnn": [(2 * I, 3 * H)],
    "lru": [(I, 2 * H), (2 * H, H)],
}


def train_step(m: nn.Module, x: torch.Tensor) -> None:
    xr = x.detach().requires_grad_(True)
    m(xr)[0].sum().backward()
    m.zero_grad(set_to_none=True)


def loop_step(m: nn.Module, x: torch.Tensor) -> None:
    xr, s, ys = x.detach().requires_grad_(True), None, []
    for t in range(xr.shape[0]):
        y, s = m.step(xr[t], s)
        ys.append(y)
    torch.stack(ys).sum().backward()
    m.zero_grad(set_to_none=True)


def floor_fn(name: str) -> Callable[[torch.Tensor], None]:
    ws = [(torch.randn(o, i, device=DEVICE) * i**-0.5).requires_grad_(True) for i, o in FLOOR_SHAPES[name]]
    bias = [torch.zeros(o, device=DEVICE, requires_grad=True) for _, o in FLOOR_SHAPES[name]]

    def run(x: torch.Tensor) -> None:
        xr = x.detach().requires_grad_(True)
        flat, total = xr.view(-1, I), 0
        for (i, _), w, b in zip(FLOOR_SHAPES[name], ws, bias):
            inp = flat if i == I else torch.cat([flat, flat], 1)
            total = total + torch.addmm(b, inp, w.t()).sum()
        total.backward()
        for p in ws + bias:  # as the layers' zero_grad(set_to_none=True): no accumulation
            p.grad = None

    return run


def contestants(
    names: list[str], T: int, slow_max_t: int, loop_max_t: int
) -> dict[str, Callable[[torch.Tensor], None]]:
    out: dict[str, Callable[[torch.Tensor], None]] = {}
    for name in names:
        m = LAYERS[name]().to(DEVICE)
        out[name] = lambda x, m=m: train_step(m, x)
        out[f"{name}-floor"] = floor_fn(name)
        if T <= loop_max_t:
            out[f"{name}-loop"] = lambda x, m=m: loop_step(m, x)
    if T <= slow_max_t:
        for name, make in TORCH.items():
            m = make().to(DEVICE)
            out[name] = lambda x, m=m: train_step(m, x)
    return out


def bench(T: int, names: list[str], repeat: int, slow_max_t: int, loop_max_t: int) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(T, B, I, device=DEVICE)
    fns = contestants(names, T, slow_max_t, loop_max_t)
    if T == 1024:  # the scan alone vs one elementwise pass over the same tensors
        a, b = torch.rand(T, B, H, device=DEVICE), torch.randn(T, B, H, device=DEVICE)
        fns["scan-fwd"] = lambda _: linear_scan(a, b)
        fns["addcmul"] = lambda _: torch.addcmul(b, a, b)
    for f in fns.values():
        f(x)  # warm-up
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f(x)
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()} | {
        f"{k}:spread": (max(v) - min(v)) / statistics.median(v) for k, v in times.items()
    }


def peak_memory(contestant: str, T: int, threads: int | None = None) -> float:
    """Extra peak RSS (MiB) of one training step in a fresh process, warmed up by a 2-step
    call (libraries, kernels loaded) so that the measured step allocates its working set anew
    (a warm-up at full size would leave it in the heap's free lists, and the step would reuse
    those pages without raising the high-water mark); the high-water mark is reset through
    /proc/self/clear_refs (Linux). On CUDA: the extra peak of torch's allocator in this
    process (after a full-size warm-up: the allocator's counters see live tensors only).
    ``threads``: the fresh process's intra-op threads (default: this process's)."""
    if DEVICE.type == "cuda":
        layers = [] if contestant.startswith("nn.") else [contestant.split("-")[0]]
        torch.manual_seed(0)
        x = torch.randn(T, B, I, device=DEVICE)
        f = contestants(layers, T, T, T)[contestant]
        f(x)
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        f(x)
        sync()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    layers = [] if contestant.startswith("nn.") else [contestant.split("-")[0]]
    threads = threads or torch.get_num_threads()
    setup = (
        f"import torch;import benchmarks.scan as s;torch.set_num_threads({threads});torch.manual_seed(0);"
        f"f=s.contestants({layers!r},{T},{T},{T})[{contestant!r}];f(torch.randn(2,s.B,s.I));"
        f"x=torch.randn({T},s.B,s.I)"
    )
    return peak_rss_mib(setup, "f(x)")


def plot(results: dict[int, dict[str, float]], path: Path, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # squeeze=False: a row of axes even for one layer (--layers mingru)
    fig, grid = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), sharey=True, squeeze=False)
    axes = grid[0]
    for ax, name in zip(axes, names):
        for key, style in [(name, "o-"), (f"{name}-floor", "k--"), (f"{name}-loop", "s:"),
                           ("nn.LSTM", "^-"), ("nn.GRU", "v-")]:  # fmt: skip
            pts = [(T, r[key]) for T, r in sorted(results.items()) if key in r]
            if pts:
                ax.loglog(*zip(*pts), style, label=key, base=2)
        ax.set_title(name)
        ax.set_xlabel("T (steps)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("training step (ms), B=16, H=256")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ts", default="128,256,512,1024,2048,4096,8192")
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--slow-max-t", type=int, default=2048, help="largest T for nn.LSTM/GRU")
    ap.add_argument("--loop-max-t", type=int, default=512, help="largest T for the step loops")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", help="cpu or cuda (times synchronize the device)")
    ap.add_argument("--memory", action="store_true", help="also measure peak memory at T=1024")
    ap.add_argument("--plot", default=None, help="plot file (default scan.png, on CUDA scan_cuda.png)")
    ap.add_argument("--json", default="", help="also write the raw results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    names = args.layers.split(",")
    if unknown := [n for n in names if n not in LAYERS]:
        ap.error(f"--layers: unknown {', '.join(unknown)} (known: {', '.join(LAYERS)})")
    ts = [int(t) for t in args.ts.split(",")]
    if args.plot is None:  # a GPU run must not overwrite the CPU's plot
        args.plot = str(Path(__file__).with_name("scan_cuda.png" if DEVICE.type == "cuda" else "scan.png"))
    where = (
        torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{torch.get_num_threads()} threads"
    )
    if DEVICE.type == "cuda":  # nn.LSTM/GRU run cuDNN, TF32 by default; the layers' GEMMs follow matmul's
        cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        where += f", TF32 cuDNN {'on' if cudnn else 'off'}, matmul {'on' if matmul else 'off'}"
    print(f"torch {torch.__version__}, {where}, scan backend "
          f"{backend(torch.zeros(1, device=DEVICE))}, B={B}, H_in=H={H}, float32, median of {args.repeat} "
          "interleaved rounds (± half the max-min spread)")  # fmt: skip
    results = {}
    for T in ts:
        r = results[T] = bench(T, names, args.repeat, args.slow_max_t, args.loop_max_t)
        cols = [k for k in r if not k.endswith(":spread")]
        row = ", ".join(f"{k} {r[k]:.1f} ms (±{r[k + ':spread'] * 50:.0f}%)" for k in cols)
        print(f"T={T}: {row}", flush=True)
    print("\n| T | layer | train ms | floor ms | loop ms | nn.LSTM ms | nn.GRU ms | layer/floor "
          "| LSTM/layer |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for T, r in results.items():
        for n in names:
            g = lambda k, r=r: f"{r[k]:.1f}" if k in r else "–"  # noqa: E731
            lstm = f"{r['nn.LSTM'] / r[n]:.1f}x" if "nn.LSTM" in r else "–"
            print(f"| {T} | {n} | {g(n)} | {g(n + '-floor')} | {g(n + '-loop')} | {g('nn.LSTM')} | "
                  f"{g('nn.GRU')} | {r[n] / r[n + '-floor']:.2f} | {lstm} |")  # fmt: skip
    if 1024 in results:
        r = results[1024]
        print(f"\nT=1024 scan forward {r['scan-fwd']:.2f} ms vs addcmul {r['addcmul']:.2f} ms: "
              f"ratio {r['scan-fwd'] / r['addcmul']:.2f}")  # fmt: skip
    if args.memory:
        unit = "extra peak CUDA memory MiB" if DEVICE.type == "cuda" else "extra peak RSS MiB"
        print(f"\n| contestant (T=1024) | {unit} |\n|---|---:|")
        for c in [*names, "nn.LSTM", "nn.GRU"]:
            print(f"| {c} | {peak_memory(c, 1024):.0f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    if args.plot and len(ts) > 1:
        plot(results, Path(args.plot), names)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
