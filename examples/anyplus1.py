"""Train a 2-layer ``rnnkit.RNN`` on the "does the sequence contain a +1?" task.

Each of N=500 sequences has L=16 steps of Bernoulli(0.05) inputs; the label says whether any
step is 1. A tanh RNN must carry one bit across up to 16 steps. Prints the loss falling.
Run: ``python examples/anyplus1.py`` (about ten seconds on a laptop CPU).
"""

from __future__ import annotations

import torch
from torch import nn

import rnnkit


def make_data(n: int = 500, length: int = 16, p: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((n, length, 1), p), generator=g)
    return x, x.amax(dim=(1, 2))  # (N, L, 1) inputs, (N,) labels


class AnyPlusOne(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.rnn = rnnkit.RNN(1, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (N, L, H)
        return self.head(out[:, -1]).squeeze(-1)  # logit from the last step


def main(epochs: int = 150) -> float:
    torch.manual_seed(0)
    x, y = make_data()
    model = AnyPlusOne()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.BCEWithLogitsLoss()
    for epoch in range(1, epochs + 1):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if epoch % 25 == 0 or epoch == 1:
            acc = ((model(x) > 0).float() == y).float().mean()
            print(f"epoch {epoch:4d}  loss {loss.item():.4f}  accuracy {acc:.3f}")
    return loss.item()


if __name__ == "__main__":
    main()
