"""Tiny float64 cases: one intra-op thread (parallel kernels only add sync cost at these
sizes, and a lot of it on a loaded machine)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
