"""rnnkit.RNN/LSTM/GRU against torch.nn, the oracle: forward, final state and every gradient.

Both of rnnkit's paths are checked: ``impl="auto"`` (in float64 torch's kernels for these
standard configurations; in float32 on the CPU also the fused kernels that ``auto`` picks for
GRU/RNN and packed LSTMs) and ``impl="loop"`` (the reference loop every fused path is tested
against).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

from .conftest import flat, make_pair

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


def _state(mode, L, D, B, H, P=0, unbatched=False):
    shape = (L * D, H) if unbatched else (L * D, B, H)
    h = torch.randn(*shape[:-1], P or H, requires_grad=True)
    if mode == "LSTM":
        return h, torch.randn(shape, requires_grad=True)
    return h


def _compare(a, b, x, hx, tol=1e-10, **fw):
    """Forward both modules; compare outputs, then gradients of inputs, states, parameters."""
    torch.manual_seed(1)
    out_a = a(x, hx, **fw) if hx is not None else a(x, **fw)
    out_b = b(x, hx) if hx is not None else b(x)
    ta, tb = flat(out_a), flat(out_b)
    assert len(ta) == len(tb)
    for u, v in zip(ta, tb):
        assert u.shape == v.shape
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)
    weights = [torch.randn_like(t) for t in ta]
    leaves = [x.data if hasattr(x, "batch_sizes") else x]
    leaves += [] if hx is None else ([*hx] if isinstance(hx, tuple) else [hx])
    ga = torch.autograd.grad(ta, leaves + list(a.parameters()), weights)
    gb = torch.autograd.grad(tb, leaves + list(b.parameters()), weights)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


GRID = list(itertools.product(MODES, [1, 2, 3], [False, True], [False, True], [True, False]))


@pytest.mark.parametrize("impl", ["auto", "loop"])
@pytest.mark.parametrize("mode,L,bidir,batch_first,bias", GRID)
def test_dense_matches_torch(impl, mode, L, bidir, batch_first, bias):
    a, b = make_pair(mode, 3, 5, L, bias=bias, batch_first=batch_first, bidirectional=bidir, impl=impl)
    T, B = 4, 3
    x = torch.randn((B, T, 3) if batch_first else (T, B, 3), requires_grad=True)
    _compare(a, b, x, _state(mode, L, 2 if bidir else 1, B, 5))
    _compare(a, b, x, None)


@pytest.mark.parametrize("impl", ["auto", "loop"])
@pytest.mark.parametrize("L,bidir,bias", list(itertools.product([1, 2, 3], [False, True], [True, False])))
def test_lstm_proj_matches_torch(impl, L, bidir, bias):
    a, b = make_pair("LSTM", 4, 6, L, bias=bias, bidirectional=bidir, proj_size=3, impl=impl)
    x = torch.randn(5, 2, 4, requires_grad=True)
    _compare(a, b, x, _state("LSTM", L, 2 if bidir else 1, 2, 6, P=3))


@pytest.mark.parametrize("impl", ["auto", "loop"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("bidir", [False, True])
def test_packed_matches_torch(impl, mode, enforce_sorted, bidir):
    a, b = make_pair(mode, 3, 4, 2, bidirectional=bidir, impl=impl)
    lengths = torch.tensor([5, 3, 3, 1]) if enforce_sorted else torch.tensor([2, 5, 1, 3])
    x = torch.randn(5, 4, 3)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    packed.data.requires_grad_(True)
    _compare(a, b, packed, _state(mode, 2, 2 if bidir else 1, 4, 4))
    _compare(a, b, packed, None)


@pytest.mark.parametrize("impl", ["auto", "loop"])
@pytest.mark.parametrize("mode", MODES)
def test_unbatched_matches_torch(impl, mode):
    a, b = make_pair(mode, 3, 4, 2, bidirectional=True, impl=impl)
    x = torch.randn(6, 3, requires_grad=True)
    _compare(a, b, x, _state(mode, 2, 2, 1, 4, unbatched=True))
    _compare(a, b, x, None)


@pytest.mark.parametrize("impl", ["auto", "loop"])
@pytest.mark.parametrize("mode", MODES)
def test_float32_matches_torch(impl, mode):
    a, b = make_pair(mode, 8, 16, 2, dtype=torch.float32, impl=impl)
    x = torch.randn(10, 4, 8, dtype=torch.float32, requires_grad=True)
    _compare(a, b, x, None, tol=1e-5)


# shapes and layouts of the property tests
LAYERS = dict(
    mode=st.sampled_from(MODES),
    T=st.integers(1, 6),
    B=st.integers(1, 4),
    I=st.integers(1, 5),
    H=st.integers(1, 5),
    L=st.integers(1, 3),
    bidir=st.booleans(),
    batch_first=st.booleans(),
)


@settings(max_examples=25, deadline=None)
@given(**LAYERS)
def test_loop_matches_torch_property(mode, T, B, I, H, L, bidir, batch_first):
    torch.set_default_dtype(torch.float64)
    a, b = make_pair(mode, I, H, L, bidirectional=bidir, batch_first=batch_first, impl="loop")
    x = torch.randn((B, T, I) if batch_first else (T, B, I), requires_grad=True)
    _compare(a, b, x, _state(mode, L, 2 if bidir else 1, B, H))


@settings(max_examples=30, deadline=None)
@given(**LAYERS, packed=st.booleans(), grad=st.booleans())
def test_float32_auto_matches_torch_property(mode, T, B, I, H, L, bidir, batch_first, packed, grad):
    """What users get in float32 on the CPU: ``impl="auto"`` (the fused kernels for GRU/RNN and
    packed LSTMs, forward and training) against torch.nn, to float32 rounding."""
    f32 = torch.float32
    a, b = make_pair(mode, I, H, L, bidirectional=bidir, batch_first=batch_first, dtype=f32)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=f32, requires_grad=grad)
    hx = _state(mode, L, 2 if bidir else 1, B, H)
    hx = tuple(h.detach().float().requires_grad_(grad) for h in (hx if mode == "LSTM" else (hx,)))
    hx = hx if mode == "LSTM" else hx[0]
    if packed:
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        x = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    if grad:
        _compare(a, b, x, hx, tol=2e-5)
        return
    with torch.no_grad():
        for u, v in zip(flat(a(x, hx)), flat(b(x, hx))):
            torch.testing.assert_close(u, v, atol=2e-5, rtol=2e-5)


def test_gradcheck_loop_lstm():
    a, _ = make_pair("LSTM", 2, 3, 2, bidirectional=True, impl="loop")
    x = torch.randn(3, 2, 2, requires_grad=True)
    h0 = torch.randn(4, 2, 3, requires_grad=True)
    c0 = torch.randn(4, 2, 3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h, c: a(x, (h, c))[0], (x, h0, c0))
