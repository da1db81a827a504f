"""``lengths=``'s packing (rnnkit/padded.py) and the time-parallel layers' padding of packed input
(rnnkit/parallel/base.py): one gather each way in place of torch's ``pack_padded_sequence`` /
``pad_packed_sequence`` (a tensor op per time step). The same
PackedSequence as torch's, and the same outputs and gradients as torch's functions give, bit for
bit; torch's functions wherever the gathers are not checked (transforms, forward AD, complex)."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit import padded
from rnnkit.parallel import base as parallel_base

SETTINGS = settings(max_examples=200, deadline=None)
DTYPES = [torch.float32, torch.float64]


@contextlib.contextmanager
def torch_packing():
    """The path before the gathers: torch's functions."""
    with mock.patch.object(padded, "fast_packing", lambda x: False):
        yield


@contextlib.contextmanager
def no_torch_packing():
    """torch's functions fail: a call that passes took the gathers."""

    def fail(*args, **kwargs):
        raise AssertionError("torch's packing ran")

    with contextlib.ExitStack() as stack:
        for module in (padded, parallel_base):
            stack.enter_context(mock.patch.object(module, "pack_padded_sequence", fail))
            stack.enter_context(mock.patch.object(module, "pad_packed_sequence", fail))
        yield


def _batch(lengths, extra, batch_first, dtype, features=3):
    B, T = len(lengths), max(lengths) + extra
    return torch.randn((B, T, features) if batch_first else (T, B, features), dtype=dtype), T, B


@SETTINGS
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=7),
    extra=st.integers(0, 2),  # total_length past the longest sequence
    batch_first=st.booleans(),
    dtype=st.sampled_from(DTYPES),
)
def test_pack_and_unpack_equal_torchs(lengths, extra, batch_first, dtype):
    x, T, B = _batch(lengths, extra, batch_first, dtype)
    L = torch.tensor(lengths)
    theirs = pack_padded_sequence(x, L, batch_first, enforce_sorted=False)
    plan = padded.plan_from_lengths(L, T, B, batch_first, x.device)
    ours = padded.pack(x, plan)
    for name in ("data", "batch_sizes", "sorted_indices", "unsorted_indices"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert a.dtype == b.dtype and a.device == b.device and torch.equal(a, b), name
    out = theirs._replace(data=torch.randn(theirs.data.shape[0], 5, dtype=dtype))
    expected, _ = pad_packed_sequence(out, batch_first, total_length=T)
    got = padded.unpack(out.data, plan, T * B).view((B, T, -1) if batch_first else (T, B, -1))
    assert torch.equal(got, expected)


def _layer(kind: int, batch_first: bool, dtype):
    kw = dict(batch_first=batch_first, dtype=dtype)
    return [
        lambda: rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, **kw),
        lambda: rnnkit.GRU(3, 4, **kw),
        lambda: rnnkit.RNN(3, 4, bidirectional=True, **kw),
        lambda: rnnkit.parallel.MinGRU(3, 4, bidirectional=True, **kw),
    ][kind]()


def _run(kind, x, lengths, batch_first, dtype):
    """Outputs, final state and every gradient of one ``lengths=`` call."""
    torch.manual_seed(1)
    m = _layer(kind, batch_first, dtype)
    x = x.clone().requires_grad_()
    y, state = m(x, None, lengths=lengths)
    h_n = state[0] if isinstance(state, tuple) else state
    grad = torch.randn_like(y)
    (y * grad).sum().add((h_n * torch.randn_like(h_n)).sum()).backward()
    return [y, h_n, x.grad] + [p.grad for p in m.parameters()]


@SETTINGS
@given(
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    extra=st.integers(0, 1),
    batch_first=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    kind=st.integers(0, 3),
)
def test_lengths_outputs_and_gradients_equal_torchs_packing(lengths, extra, batch_first, dtype, kind):
    x, _, _ = _batch(lengths, extra, batch_first, dtype)
    L = torch.tensor(lengths)
    torch.manual_seed(2)
    with no_torch_packing():
        ours = _run(kind, x, L, batch_first, dtype)
    torch.manual_seed(2)
    with torch_packing():
        theirs = _run(kind, x, L, batch_first, dtype)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b) and torch.equal(a.signbit(), b.signbit())


@pytest.mark.parametrize("batch_first", [False, True])
def test_eager_lengths_takes_the_gathers(batch_first):
    """(The equality tests above would pass if the gathers were never used.)"""
    m = rnnkit.GRU(3, 4, batch_first=batch_first)
    x = torch.randn(2, 5, 3) if batch_first else torch.randn(5, 2, 3)
    with no_torch_packing():
        y, _ = m(x, lengths=[5, 2])
    assert torch.equal(y[1, 2:] if batch_first else y[2:, 1], torch.zeros(3, 4))
    assert padded.fast_packing(x)


def test_torchs_packing_where_the_gathers_are_not_checked():
    x = torch.randn(4, 2, 3)
    assert not padded.fast_packing(x.to(torch.complex128))
    with torch.autograd.forward_ad.dual_level():
        assert not padded.fast_packing(x)
    seen = []
    torch.func.vmap(lambda t: seen.append(padded.fast_packing(t)) or t)(x)
    assert seen == [False]


@SETTINGS
@given(
    lengths=st.lists(st.integers(1, 6), min_size=1, max_size=7),
    enforce_sorted=st.booleans(),
    dtype=st.sampled_from(DTYPES),
)
def test_pad_packed_and_gather_equal_torchs(lengths, enforce_sorted, dtype):
    """The time-parallel layers' padding of packed input and packing back, as torch's."""
    L = torch.tensor(lengths)
    if enforce_sorted:  # no sorted_indices
        L = L.sort(descending=True).values
    x, T, B = _batch(lengths, 0, False, dtype)
    packed = pack_padded_sequence(x, L, enforce_sorted=enforce_sorted)
    assert (packed.sorted_indices is None) == enforce_sorted
    expected, expected_lengths = pad_packed_sequence(packed)
    got, got_lengths, plan = padded.pad_packed(packed)
    assert torch.equal(got, expected) and got.shape == (T, B, 3)
    assert got_lengths.dtype == expected_lengths.dtype and torch.equal(got_lengths, expected_lengths)
    assert torch.equal(padded.gather(expected, plan), packed.data)


@pytest.mark.parametrize("cls", [rnnkit.parallel.MinGRU, rnnkit.parallel.QRNN])
@pytest.mark.parametrize("dtype", DTYPES)
def test_parallel_packed_input_equals_torchs_padding(cls, dtype):
    """A time-parallel layer on packed input: the same outputs and gradients through the gathers."""
    x, _, B = _batch([4, 1, 3, 4, 2], 0, False, dtype)
    results = []
    for context in (no_torch_packing, torch_packing):
        torch.manual_seed(1)
        m = cls(3, 4, num_layers=2, bidirectional=True, dtype=dtype)
        xi = x.clone().requires_grad_()
        with context():
            out, h_n = m(pack_padded_sequence(xi, torch.tensor([4, 1, 3, 4, 2]), enforce_sorted=False))
        h_n = h_n[0] if isinstance(h_n, tuple) else h_n
        torch.manual_seed(3)
        (out.data * torch.randn_like(out.data)).sum().add((h_n * torch.randn_like(h_n)).sum()).backward()
        results.append([out.data, h_n, xi.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b) and torch.equal(a.signbit(), b.signbit())
