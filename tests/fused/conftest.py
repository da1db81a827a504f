"""Fixtures of the fused-kernel tests (``num_threads`` is in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def two_threads(num_threads):
    """Two threads: enough for the C++ kernels to split a big enough step between them."""
    num_threads(2)
