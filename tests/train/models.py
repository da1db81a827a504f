"""Tiny models for the training-kit tests (torch.nn layers only: train/ is model-agnostic)."""

from __future__ import annotations

import torch
from torch import nn


class TinyLM(nn.Module):
    """Embedding -> LSTM (tuple state) or GRU (tensor state) -> Linear.

    forward(x (T, B) or (B, T), state) -> (logits (T, B, V) or (B, T, V), state).
    """

    def __init__(
        self,
        vocab: int = 11,
        hidden: int = 8,
        *,
        cell: str = "lstm",
        batch_first: bool = False,
        dropout: float = 0.0,
        tie: bool = False,
    ) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(hidden, hidden, batch_first=batch_first)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab)
        if tie:
            self.out.weight = self.emb.weight

    def forward(self, x, state=None):
        y, state = self.rnn(self.drop(self.emb(x)), state)
        return self.out(self.drop(y)), state


class NestedStateLM(nn.Module):
    """Two LSTM cells with a nested state ``((h1, c1), {"h2": h2, "c2": c2})``; time-major."""

    def __init__(self, vocab: int = 7, hidden: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.c1, self.c2 = nn.LSTMCell(hidden, hidden), nn.LSTMCell(hidden, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        if state is None:
            z = x.new_zeros(x.shape[1], self.c1.hidden_size, dtype=torch.get_default_dtype())
            state = ((z, z), {"h2": z, "c2": z})
        (h1, c1), d = state
        h2, c2 = d["h2"], d["c2"]
        outs = []
        for xt in self.emb(x):
            h1, c1 = self.c1(xt, (h1, c1))
            h2, c2 = self.c2(h1, (h2, c2))
            outs.append(h2)
        return self.out(torch.stack(outs)), ((h1, c1), {"h2": h2, "c2": c2})


class Stateless(nn.Module):
    """model(x) -> logits: a per-token MLP (no recurrence)."""

    def __init__(self, vocab: int = 11, hidden: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Embedding(vocab, hidden), nn.Tanh(), nn.Linear(hidden, vocab))

    def forward(self, x):
        return self.net(x)


def tokens(n: int = 400, vocab: int = 11, seed: int = 0) -> torch.Tensor:
    """A learnable token stream: a noisy cycle."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) % vocab
    noise = torch.randint(0, vocab, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.1, noise, base)


def masked_mean_loss(output, targets):
    """Token cross-entropy as a masked mean: over no target it is 0/0, NaN, with NaN gradients
    (unlike ``F.cross_entropy``'s, which are zero), as many hand-written losses are."""
    mask = (targets != -100).to(output.dtype)
    ce = torch.nn.functional.cross_entropy(
        output.reshape(-1, output.shape[-1]), targets.clamp(min=0).reshape(-1), reduction="none"
    )
    return (ce * mask.reshape(-1)).sum() / mask.sum()


def sgd(model: nn.Module, lr: float = 0.5) -> torch.optim.Optimizer:
    """Plain SGD over ``model``'s parameters: the optimizer most training-kit tests use."""
    return torch.optim.SGD(model.parameters(), lr=lr)
