"""The fused path (``impl="fused"``) against torch.nn, the oracle, in float64.

Forward outputs, final states and every gradient (input, initial states, parameters), over
dense (time-major and batch_first), packed (sorted and unsorted), unbatched, bidirectional
and multi-layer inputs, for every standard family. Both fused backends run: the compiled
extension (when available, see ``test_fused_kernels``) and the pure-PyTorch kernels.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from ..conftest import flat, make_pair

MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def _state(mode, LD, B, H, P=0, unbatched=False):
    lead = (LD,) if unbatched else (LD, B)
    h = torch.randn(*lead, P or H, requires_grad=True)
    return (h, torch.randn(*lead, H, requires_grad=True)) if mode == "LSTM" else h


def compare(a, b, x, hx, tol=1e-10):
    """Forward both; compare outputs and final states, then all gradients."""
    out_a = a(x, hx) if hx is not None else a(x)
    out_b = b(x, hx) if hx is not None else b(x)
    ta, tb = flat(out_a), flat(out_b)
    assert len(ta) == len(tb)
    for u, v in zip(ta, tb):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)
    weights = [torch.randn_like(t) for t in ta]
    leaves = [x.data if hasattr(x, "batch_sizes") else x]
    leaves += [] if hx is None else ([*hx] if isinstance(hx, tuple) else [hx])
    ga = torch.autograd.grad(ta, leaves + list(a.parameters()), weights)
    gb = torch.autograd.grad(tb, leaves + list(b.parameters()), weights)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


@pytest.mark.parametrize(
    "mode,L,bidir,batch_first,bias",
    list(itertools.product(MODES, [1, 2], [False, True], [False, True], [True]))
    + [(m, 2, True, False, False) for m in MODES],
)
def test_dense_matches_torch(backend, mode, L, bidir, batch_first, bias):
    a, b = make_pair(mode, 3, 5, L, bias=bias, batch_first=batch_first, bidirectional=bidir, impl="fused")
    T, B = 4, 3
    x = torch.randn((B, T, 3) if batch_first else (T, B, 3), requires_grad=True)
    compare(a, b, x, _state(mode, L * (2 if bidir else 1), B, 5))
    compare(a, b, x, None)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_matches_torch(backend, mode, enforce_sorted):
    a, b = make_pair(mode, 3, 4, 2, bidirectional=True, impl="fused")
    lengths = torch.tensor([5, 3, 3, 1]) if enforce_sorted else torch.tensor([2, 5, 1, 3])
    x = pack_padded_sequence(torch.randn(5, 4, 3), lengths, enforce_sorted=enforce_sorted)
    x.data.requires_grad_(True)
    compare(a, b, x, _state(mode, 4, 4, 4))


@pytest.mark.parametrize("bidir", [False, True])
def test_lstm_proj_matches_torch(backend, bidir):
    a, b = make_pair("LSTM", 4, 6, 2, bidirectional=bidir, proj_size=3, impl="fused")
    x = torch.randn(5, 2, 4, requires_grad=True)
    compare(a, b, x, _state("LSTM", 2 * (2 if bidir else 1), 2, 6, P=3))
    lengths = torch.tensor([2, 5])
    xp = pack_padded_sequence(torch.randn(5, 2, 4), lengths, enforce_sorted=False)
    xp.data.requires_grad_(True)
    compare(a, b, xp, None)


@pytest.mark.parametrize("mode", MODES)
def test_unbatched_matches_torch(backend, mode):
    a, b = make_pair(mode, 3, 4, 2, bidirectional=True, impl="fused")
    x = torch.randn(6, 3, requires_grad=True)
    compare(a, b, x, _state(mode, 4, 1, 4, unbatched=True))


def test_padded_lengths_match_loop(backend):
    """``lengths=`` (padded batch run packed) agrees with the reference loop."""
    torch.manual_seed(0)
    a = make_pair("GRU", 3, 4, 2, impl="fused", bidirectional=True)[0]
    torch.manual_seed(0)
    ref = make_pair("GRU", 3, 4, 2, impl="loop", bidirectional=True)[0]
    x = torch.randn(2, 6, 3, requires_grad=True).transpose(0, 1)
    lengths = torch.tensor([3, 6])
    (oa, ha), (ob, hb) = a(x, lengths=lengths), ref(x, lengths=lengths)
    torch.testing.assert_close(oa, ob, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ha, hb, atol=1e-12, rtol=1e-12)
    ga = torch.autograd.grad((oa.sum() + ha.sum()), [x, *a.parameters()])
    gb = torch.autograd.grad((ob.sum() + hb.sum()), [x, *ref.parameters()])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gru_infinite_state_matches_torch(backend, dtype):
    """torch's GRUCell updates h = (h_{t-1} - n) z + n; the fused GRU computed lerp(n, h_{t-1}, z),
    which for z >= 1/2 is h_{t-1} - (h_{t-1} - n)(1 - z): NaN for an infinite h_{t-1} at z = 1,
    where torch.nn.GRU keeps the inf. Positive W_hh saturates every gate of a row holding +inf
    (r = z = 1: inf stays inf) or -inf (r = z = 0: NaN in torch too, matched)."""
    a, b = make_pair("GRU", 3, 4, impl="fused")
    a, b, loop = a.to(dtype), b.to(dtype), make_pair("GRU", 3, 4, impl="loop")[0].to(dtype)  # the cell too
    with torch.no_grad():
        b.weight_hh_l0.abs_()
        a.load_state_dict(b.state_dict())
        loop.load_state_dict(b.state_dict())
        x, h0 = torch.randn(5, 3, 3, dtype=dtype), torch.randn(1, 3, 4, dtype=dtype)
        h0[0, 0, 1], h0[0, 1, 2], h0[0, 2, 0], h0[0, 2, 3] = float("inf"), float("-inf"), float("inf"), 1e30
        ref, ref_hn = b(x, h0)
        assert ref.isinf().any() and ref.isnan().any()  # both cases happen
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        for out, hn in (a(x, h0), loop(x, h0)):
            torch.testing.assert_close(out, ref, atol=tol, rtol=tol, equal_nan=True)
            torch.testing.assert_close(hn, ref_hn, atol=tol, rtol=tol, equal_nan=True)
