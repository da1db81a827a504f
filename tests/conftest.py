"""Shared helpers: build an rnnkit layer and its torch.nn oracle with identical weights."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import settings
from torch import nn

import rnnkit

# Property tests draw the same examples on every run (CI must not fail by chance on an example
# no earlier run met); RNNKIT_HYPOTHESIS=explore draws fresh ones, to look for new failures.
settings.register_profile("rnnkit", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("explore" if os.environ.get("RNNKIT_HYPOTHESIS") == "explore" else "rnnkit")

PAIRS = {
    "RNN_TANH": (rnnkit.RNN, nn.RNN),
    "RNN_RELU": (rnnkit.RNN, nn.RNN),
    "LSTM": (rnnkit.LSTM, nn.LSTM),
    "GRU": (rnnkit.GRU, nn.GRU),
}


def make_pair(mode: str, *args, impl: str = "auto", seed: int = 0, **kwargs):
    """(rnnkit layer, torch.nn layer) built from the same seed: identical parameters."""
    ours, theirs = PAIRS[mode]
    if mode.startswith("RNN"):
        kwargs["nonlinearity"] = mode[4:].lower()
    torch.manual_seed(seed)
    a = ours(*args, impl=impl, **kwargs)
    torch.manual_seed(seed)
    b = theirs(*args, **kwargs)
    return a, b


def flat(out):
    """All tensors of an (output, state) result, PackedSequence data included."""
    if isinstance(out, torch.nn.utils.rnn.PackedSequence):
        return [out.data]
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flat(o)]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """``torch.set_default_dtype(dtype)`` for a block, then back."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


@pytest.fixture(autouse=True)
def _float64_default():
    with default_dtype(torch.float64):
        yield


@pytest.fixture
def num_threads():
    """``num_threads(n)`` runs the rest of the test on ``n`` threads; restored afterwards."""
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


@contextlib.contextmanager
def pure_kernels():
    """The fused path on its pure-PyTorch kernels for a block, also where the compiled ones are
    built: ``rnnkit.kernels.backend`` pinned to ``"pure"`` (the standard and normalized kinds ask
    it), and ``rnnkit.kernels.variants.use_ext_for`` to ``False`` (the variant kinds, GRU
    reset-before and MUT1-3 and the LSTM's Greff layouts, ask the extension directly: pinning
    ``backend`` alone left them on the compiled kernels)."""
    from unittest import mock

    import rnnkit.kernels as K
    from rnnkit.kernels import variants

    with (
        mock.patch.object(K, "backend", lambda x: "pure"),
        mock.patch.object(variants, "use_ext_for", lambda x: False),
    ):
        yield


@pytest.fixture(params=["ext", "pure"])
def backend(request):
    """Run the test on one fused backend: the compiled kernels (skipped only where they cannot
    be built) or the pure-PyTorch ones (:func:`pure_kernels`)."""
    if request.param == "ext":
        from .fused.test_fused_kernels import require_ext

        require_ext()
        yield request.param
    else:
        with pure_kernels():
            yield request.param
