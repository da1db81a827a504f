"""Training steps of a character LM on a GPU, eager vs ``rnnkit.cuda_graphed``, through the kit.

A 2 x 512 LSTM language model (embedding 128, 65 symbols, batch 32 x 100 tokens, Adam,
gradient clipping, state carried from window to window) trained by
:class:`rnnkit.train.Trainer`: the embedding, softmax, loss and optimizer run eagerly in both
columns, only the recurrent layer is graphed. Needs CUDA.

    python benchmarks/graphs_train.py [--steps 50]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import rnnkit
from rnnkit.data import bptt_batches
from rnnkit.train import Trainer

CASES = {
    "lstm (cuDNN)": {},
    "lstm zoneout 0.1": {"zoneout": 0.1},
    "lstm recurrent_dropout 0.25": {"recurrent_dropout": 0.25},
    "lstm layer norm": {"norm": "layer"},
}


class LM(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.emb, self.rnn, self.out = nn.Embedding(65, 128), rnn, nn.Linear(512, 65)

    def forward(self, x, state=None):
        y, state = self.rnn(self.emb(x), state)
        return self.out(y), state


def step_ms(kwargs: dict, graphed: bool, ids: torch.Tensor, steps: int) -> float:
    torch.manual_seed(0)
    rnn = rnnkit.LSTM(128, 512, num_layers=2, **kwargs).cuda()
    model = LM(rnnkit.cuda_graphed(rnn) if graphed else rnn).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def fit(n: int) -> None:
        Trainer(model, opt, max_steps=n, clip_norm=1.0, progress=False).fit(bptt_batches(ids, 32, 100))

    fit(10)  # warm-up: cuDNN's plans, the graphs' captures
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fit(steps)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    ids = torch.randint(0, 65, (32 * 100 * (args.steps + 10) + 1,))
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, float32, {args.steps} steps")
    print("| layer | eager ms/step | graphed ms/step | speed-up |\n|---|---:|---:|---:|")
    for name, kw in CASES.items():
        e, g = step_ms(kw, False, ids, args.steps), step_ms(kw, True, ids, args.steps)
        print(f"| {name} | {e:.1f} | {g:.1f} | {e / g:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
