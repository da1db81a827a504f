"""Fixtures of the fused-kernel tests (``num_threads`` is in tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

import rnnkit


@pytest.fixture
def two_threads(num_threads):
    """Two threads: enough for the C++ kernels to split a big enough step between them."""
    num_threads(2)


class LSTMHead(torch.nn.Module):
    """A 2-layer bidirectional ``rnnkit.LSTM(3, hidden, **kw)`` + linear head, seeded: the compile
    tests' model (``impl="auto"`` compiled against ``impl="loop"``)."""

    def __init__(self, impl: str, hidden: int, **kw) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = rnnkit.LSTM(3, hidden, 2, bidirectional=True, impl=impl, **kw)
        self.head = torch.nn.Linear(2 * hidden, 2)

    def forward(self, x):
        out, (h, c) = self.rnn(x)
        return self.head(out).sum(0) + c.sum()


def assert_same_outputs_and_gradients(compiled, y, ref, y_ref) -> None:
    """``y`` of the module ``compiled`` equals ``y_ref`` of ``ref``, and so do the gradients of
    their sums with respect to each module's parameters (float64, 1e-10)."""
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    ga = torch.autograd.grad(y.sum(), list(compiled.parameters()))
    gb = torch.autograd.grad(y_ref.sum(), list(ref.parameters()))
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)
