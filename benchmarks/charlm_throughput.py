"""Training throughput (tokens/s) of CharLM shapes, measured interleaved to share the noise.

Each config is one training step (forward, backward, clip, Adam) on random tokens;
rounds visit all configs in turn, and the median and best step time over rounds
are reported, so that load from other jobs hits every config alike::

    python benchmarks/charlm_throughput.py --configs 512x2b32,384x2b64,256x2b64 --rounds 8

``--impls torch,auto,fused`` runs each config with ``torch.nn.LSTM`` (the default) and/or
``rnnkit.LSTM(impl=...)`` (``auto``: what the main job runs); ``--tune-malloc`` as ``rnnkit
train`` does (else torch's LSTM faults its workspace in every step at the medium shapes).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rnnkit  # noqa: E402
from rnnkit.tasks.charlm import CharLM, detach_state  # noqa: E402


def parse(cfg: str) -> tuple[int, int, int, int]:
    """'HxLbB[tT]' -> (hidden, layers, batch, seq); seq defaults to 100."""
    h, rest = cfg.split("x")
    layers, rest = rest.split("b")
    batch, _, seq = rest.partition("t")
    return int(h), int(layers), int(batch), int(seq or 100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--configs", default="512x2b32,384x2b64,256x2b64,512x1b64")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=2, help="steps per config per round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--emb", type=int, default=64)
    p.add_argument("--impls", default="torch", help="torch (torch.nn.LSTM) and/or rnnkit impl names")
    p.add_argument("--tune-malloc", action="store_true", help="tune_malloc() first (as rnnkit train)")
    args = p.parse_args()
    if args.tune_malloc:
        from rnnkit.train import tune_malloc

        tune_malloc()
    torch.set_num_threads(args.threads)
    setups = []
    for cfg in args.configs.split(","):
        h, layers, b, t = parse(cfg)
        for impl in args.impls.split(","):
            torch.manual_seed(0)
            factory = torch.nn.LSTM if impl == "torch" else functools.partial(rnnkit.LSTM, impl=impl)
            model = CharLM(84, h, layers, args.emb, rnn_factory=factory)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            x = torch.randint(0, 84, (b, t + 1))
            setups.append([f"{cfg} {impl}", model, opt, x, None, []])

    def step(s: list) -> None:
        _, model, opt, x, state, _ = s
        logits, state = model(x[:, :-1], state)
        loss = F.cross_entropy(logits.reshape(-1, 84), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        s[4] = detach_state(state)

    for s in setups:  # warm-up
        step(s)
    for _ in range(args.rounds):
        for s in setups:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(s)
            s[5].append((time.perf_counter() - t0) / args.steps)
    for cfg, _, _, x, _, times in setups:
        toks = x.size(0) * (x.size(1) - 1)
        med, best = statistics.median(times), min(times)
        print(f"{cfg:>20}  median {toks / med:8.0f} tok/s   best {toks / best:8.0f} tok/s")


if __name__ == "__main__":
    main()
