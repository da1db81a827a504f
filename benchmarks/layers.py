"""Layer speed: rnnkit vs torch.nn vs rnnkit's reference loop, interleaved in one run.

For every case and shape it times the forward pass and the training step (forward +
backward of ``output.sum()``) of three contestants:

* ``rnnkit``  — the layer as users build it (``impl="auto"``: torch's kernels when the
  configuration is standard, rnnkit's fastest path otherwise);
* ``torch``   — the ``torch.nn`` layer of the same family and shape (the yardstick);
* ``loop``    — the same rnnkit layer forced onto the reference loop (``impl="loop"``);
* ``fused``   — the same rnnkit layer forced onto the fused kernels (``impl="fused"``,
  :mod:`rnnkit.kernels`), for the cases that have one (else its columns show ``-``).

Repetitions are interleaved (a round of every contestant, repeated) and the median is
reported, so slow drifts of a shared machine hit all of them alike. The order of a round
follows a balanced Latin square (:func:`round_order`): every contestant runs right after
every other one equally often, so none inherits one predecessor's cold caches every round.

    python benchmarks/layers.py                   # all cases, all shapes
    python benchmarks/layers.py --shapes small --cases lstm,gru --repeat 5
    python benchmarks/layers.py --threads 1 --clock cpu  # steadier on a busy machine
    python benchmarks/layers.py --eval --cases lstm-batchnorm  # forward in evaluation mode

Other modules add rows by appending to ``CASES`` (name, family, rnnkit constructor kwargs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import rnnkit
from rnnkit import dispatch

SHAPES = {  # name: (T, B, I, H)
    "small": (64, 8, 32, 64),
    "medium": (100, 32, 128, 256),
    "large": (100, 64, 512, 512),
}
FAMILIES = {
    "rnn": (rnnkit.RNN, nn.RNN),
    "lstm": (rnnkit.LSTM, nn.LSTM),
    "gru": (rnnkit.GRU, nn.GRU),
}
# (case name, family, extra rnnkit kwargs). Variants of later issues append here.
CASES: list[tuple[str, str, dict]] = [("rnn", "rnn", {}), ("lstm", "lstm", {}), ("gru", "gru", {})]
# Regularizers (training-step cost; the torch contestant is the same layout, unregularized).
CASES += [
    ("lstm+weight_drop", "lstm", {"weight_drop": 0.5}),
    ("lstm2", "lstm", {"num_layers": 2}),
    ("lstm2+locked_dropout", "lstm", {"num_layers": 2, "locked_dropout": 0.3}),
    ("lstm2+awd", "lstm", {"num_layers": 2, "weight_drop": 0.5, "locked_dropout": 0.3}),
    ("lstm+recurrent_dropout", "lstm", {"recurrent_dropout": 0.25}),
    ("lstm+zoneout", "lstm", {"zoneout": (0.15, 0.05)}),
    ("gru+weight_drop", "gru", {"weight_drop": 0.5}),
    ("gru+recurrent_dropout", "gru", {"recurrent_dropout": 0.25}),
    ("gru+zoneout", "gru", {"zoneout": 0.1}),
]
# Layout keywords that the torch.nn contestant gets too (everything else is rnnkit-only).
LAYOUT = ("num_layers", "bidirectional", "batch_first", "proj_size", "dropout")
# The cell zoo (issue 3): every option of rnnkit.cells. All have fused kernels: peephole, the
# Greff ablations and the GRU variants (rnnkit.kernels.variants), the norms (kernels.norm_ops).
CASES += [
    ("lstm-peephole", "lstm", {"peephole": True}),
    ("lstm-layernorm", "lstm", {"norm": "layer"}),
    ("lstm-batchnorm", "lstm", {"norm": "batch"}),
    ("lstm-forget_bias", "lstm", {"forget_bias": 1.0}),
    ("lstm-nig", "lstm", {"input_gate": False}),
    ("lstm-nfg", "lstm", {"forget_gate": False}),
    ("lstm-nog", "lstm", {"output_gate": False}),
    ("lstm-niaf", "lstm", {"input_activation": False}),
    ("lstm-noaf", "lstm", {"output_activation": False}),
    ("lstm-cifg", "lstm", {"coupled_gates": True}),
    ("lstm-fgr", "lstm", {"full_gate_recurrence": True}),
    ("gru-reset_before", "gru", {"reset_after": False}),
    ("gru-layernorm", "gru", {"norm": "layer"}),
    ("gru-mut1", "gru", {"variant": "mut1"}),
    ("gru-mut2", "gru", {"variant": "mut2"}),
    ("gru-mut3", "gru", {"variant": "mut3"}),
    ("rnn-layernorm", "rnn", {"norm": "layer"}),
]
# Normalized cells with a regularizer: both run on the fused path (kernels/norm_ops.py).
CASES += [("lstm-layernorm+recurrent_dropout", "lstm", {"norm": "layer", "recurrent_dropout": 0.25})]
# A normalized cell with peepholes: on the fused path since the tenth session.
CASES += [("lstm-layernorm+peephole", "lstm", {"norm": "layer", "peephole": True})]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter
DEVICE = torch.device("cpu")  # --device
EVAL = False  # --eval: forward in evaluation mode


def _sync() -> None:
    if DEVICE.type == "cuda":  # kernels run asynchronously: time until they are done
        torch.cuda.synchronize()


def _timer(fn: Callable[[nn.Module], object], m: nn.Module, inner: int = 1) -> float:
    """Mean time of ``inner`` back-to-back calls (sub-millisecond calls need several)."""
    _sync()
    t0 = _clock()
    for _ in range(inner):
        fn(m)
    _sync()
    return (_clock() - t0) / inner


def round_order(names: list[str], r: int) -> list[str]:
    """Round ``r``'s order of the contestants ``names`` (n of them): row ``r`` of a Williams
    design. Over every n rounds (2n for an odd n) each contestant runs at every position and
    right after every other contestant equally often. A plain rotation kept the cyclic order:
    a contestant followed the same one in n - 1 of n rounds (the fused path's successor started
    with its caches cold in most samples of the median)."""
    n = len(names)
    base, lo, hi = [0], 1, n - 1  # 0, 1, n-1, 2, n-2, ...: every difference mod n once
    while len(base) < n:
        base.append(lo)
        lo += 1
        if len(base) < n:
            base.append(hi)
            hi -= 1
    row = [names[(b + r) % n] for b in base]
    if n % 2 and (r // n) % 2:  # odd n: the mirrored rows supply the pairs the first n lack
        row.reverse()
    return row


def bench_case(
    family: str,
    kwargs: dict,
    shape: tuple[int, int, int, int],
    repeat: int,
    loop: bool = True,
    graphs: bool = False,
):
    T, B, I, H = shape
    ours_cls, torch_cls = FAMILIES[family]
    torch.manual_seed(0)
    models = {
        "rnnkit": ours_cls(I, H, **kwargs),
        "torch": torch_cls(I, H, **{k: v for k, v in kwargs.items() if k in LAYOUT}),
    }
    if loop:  # the generic loop is slow at the large shape, where no target involves it
        models["loop"] = ours_cls(I, H, impl="loop", **kwargs)
    fused = ours_cls(I, H, impl="loop", **kwargs)
    if dispatch.fused_supported(fused):
        fused.impl = "fused"
        models["fused"] = fused
    if graphs:  # the layer as users build it, replayed as CUDA graphs (rnnkit.cuda_graphed)
        models["graphed"] = rnnkit.cuda_graphed(ours_cls(I, H, **kwargs))
    for m in models.values():
        m.to(DEVICE).train()
    x = torch.randn(T, B, I, device=DEVICE)

    def fwd(m):
        with torch.no_grad():
            if EVAL:  # batch norm's running statistics, no dropout/zoneout masks
                m.eval()
            m(x)
            if EVAL:
                m.train()

    def train(m):
        xr = x.detach().requires_grad_(True)
        m(xr)[0].sum().backward()
        m.zero_grad(set_to_none=True)

    times: dict[tuple[str, str], list[float]] = {}
    for m in models.values():  # warm-up
        fwd(m)
        train(m)
    # Each sample lasts at least ~20 ms, so the small shape is not timed call by call.
    inner = max(1, int(0.02 / max(_timer(train, models["torch"]), 1e-6)))
    for r in range(repeat):  # no contestant always follows the same one
        for name in round_order(list(models), r):
            m = models[name]
            times.setdefault((name, "fwd"), []).append(_timer(fwd, m, inner))
            times.setdefault((name, "train"), []).append(_timer(train, m, inner))
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def tf32_note() -> str:
    """CUDA's float32 math settings as torch leaves them: cuDNN's RNNs (torch.nn and impl="auto"
    on standard layers) run TF32 by default, the loop's and fused kernels' matmuls do not."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    return f"TF32 cuDNN {'on' if cudnn else 'off'}, matmul {'on' if matmul else 'off'}"


def _fmt(r: dict, key: tuple[str, str], den: tuple[str, str] | None = None, spec: str = ".2f") -> str:
    if key not in r or (den is not None and den not in r):
        return "-"
    return format(r[key] / r[den] if den else r[key], spec)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or this process's CPU time (steadier on a shared machine; use --threads 1)",
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda (wall clock, synchronized)")
    ap.add_argument("--no-loop", action="store_true", help="skip the generic-loop contestant")
    ap.add_argument("--eval", action="store_true", help="time the forward in evaluation mode (m.eval())")
    ap.add_argument(
        "--graphs", action="store_true", help="CUDA: add rnnkit.cuda_graphed(layer) (three more columns)"
    )
    args = ap.parse_args(argv)
    if args.graphs and args.device == "cpu":
        ap.error("--graphs needs --device cuda")
    if args.clock == "cpu" and torch.device(args.device).type == "cuda":  # the GPU's work is no CPU time
        ap.error("--clock cpu times this process's CPU only: use the wall clock with --device cuda")
    torch.set_num_threads(args.threads)
    global _clock, DEVICE, EVAL
    EVAL = args.eval
    _clock = CLOCKS[args.clock]
    DEVICE = torch.device(args.device)
    wanted = set(filter(None, args.cases.split(",")))
    shapes = args.shapes.split(",")
    for flag, names, known in (("--cases", wanted, [c[0] for c in CASES]), ("--shapes", shapes, [*SHAPES])):
        if unknown := [n for n in names if n not in known]:  # else a typo silently drops rows
            ap.error(f"{flag}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
    where = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"{args.threads} threads"
    if DEVICE.type == "cuda":  # "float32" is not the whole story there: cuDNN's RNNs may run TF32
        where += ", " + tf32_note()
    print(f"torch {torch.__version__}, {where}, float32, median of {args.repeat}, {args.clock} clock")
    print(
        "| case | shape | rnnkit fwd ms | torch fwd ms | loop fwd ms | fused fwd ms | rnnkit train ms | "
        "torch train ms | loop train ms | fused train ms | fwd rnnkit/torch | train rnnkit/torch | "
        "train loop/rnnkit | fwd fused/torch | train fused/torch | train loop/fused |"
        + (" graphed fwd ms | graphed train ms | train graphed/torch |" if args.graphs else "")
    )
    print("|---|---|" + "---:|" * (17 if args.graphs else 14))
    for name, family, kwargs in CASES:
        if wanted and name not in wanted:
            continue
        for sname in shapes:
            r = bench_case(family, kwargs, SHAPES[sname], args.repeat, not args.no_loop, args.graphs)
            cells = [
                _fmt(r, ("rnnkit", "fwd")),
                _fmt(r, ("torch", "fwd")),
                _fmt(r, ("loop", "fwd")),
                _fmt(r, ("fused", "fwd")),
                _fmt(r, ("rnnkit", "train")),
                _fmt(r, ("torch", "train")),
                _fmt(r, ("loop", "train")),
                _fmt(r, ("fused", "train")),
                _fmt(r, ("rnnkit", "fwd"), ("torch", "fwd"), ".3f"),
                _fmt(r, ("rnnkit", "train"), ("torch", "train"), ".3f"),
                _fmt(r, ("loop", "train"), ("rnnkit", "train")),
                _fmt(r, ("fused", "fwd"), ("torch", "fwd"), ".3f"),
                _fmt(r, ("fused", "train"), ("torch", "train"), ".3f"),
                _fmt(r, ("loop", "train"), ("fused", "train")),
            ]
            if args.graphs:
                cells += [
                    _fmt(r, ("graphed", "fwd")),
                    _fmt(r, ("graphed", "train")),
                    _fmt(r, ("graphed", "train"), ("torch", "train"), ".3f"),
                ]
            print(f"| {name} | {sname} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
