"""Fixtures of the fused-kernel tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def num_threads():
    """``num_threads(n)`` runs the rest of the test on ``n`` threads; restored afterwards."""
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


@pytest.fixture
def two_threads(num_threads):
    """Two threads: enough for the C++ kernels to split a big enough step between them."""
    num_threads(2)
