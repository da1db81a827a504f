"""torch's own tools applied to rnnkit layers as torch.nn users apply them to torch.nn's: the
weight utilities (``parametrize``, weight and spectral norm, ``prune``), dynamic quantization and
``torch.nn.utils.rnn``'s helpers — against torch.nn doing the same to its layer built the same way
(the training-side tools: ``tests/test_ecosystem_training.py``)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize, prune
from torch.nn.utils.rnn import (
    PackedSequence,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
    unpack_sequence,
    unpad_sequence,
)

import rnnkit

IMPLS = ["auto", "fused", "loop"]


class _ColumnScale(nn.Module):
    """A custom parametrization: ``W ↦ W diag(s)`` (any shape)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * torch.linspace(0.5, 1.5, w.shape[1], dtype=w.dtype)


def _old(fn):
    def apply(m: nn.Module, name: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the old-style utilities are deprecated
            fn(m, name)

    return apply


CHANGES = {  # name -> f(module, attribute)
    "orthogonal": lambda m, a: parametrizations.orthogonal(m, a),
    "custom": lambda m, a: parametrize.register_parametrization(m, a, _ColumnScale()),
    "weight_norm": lambda m, a: parametrizations.weight_norm(m, a),
    "spectral_norm": lambda m, a: parametrizations.spectral_norm(m, a),
    "old-weight_norm": _old(nn.utils.weight_norm),
    "old-spectral_norm": _old(nn.utils.spectral_norm),
    "prune": lambda m, a: prune.l1_unstructured(m, a, amount=0.5),
}


def _run_twice(m: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Two calls' outputs and the gradients of a loss over both (input and parameters)."""
    xi = x.clone().requires_grad_()
    out1, out2 = m(xi)[0], m(xi)[0]
    loss = (out1 * torch.linspace(-1, 1, out1.shape[-1])).sum() + out2.pow(2).sum()
    return [out1, out2, *torch.autograd.grad(loss, [xi, *m.parameters()])]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("attr", ["weight_hh_l0", "weight_ih_l1"])
@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_a_changed_weight_gives_torch_nns_numbers(family, change, attr, impl):
    torch.manual_seed(0)
    theirs = getattr(nn, family)(3, 4, 2)
    ours = getattr(rnnkit, family)(3, 4, 2, impl=impl)
    ours.load_state_dict(theirs.state_dict())
    for m in (theirs, ours):
        torch.manual_seed(1)  # (spectral norm's random start vector)
        CHANGES[change](m, attr)
        # torch.nn computes a parametrized weight twice per call, rnnkit once: a spectral norm
        # takes one power-iteration step per call in training there, two on torch.nn (README)
        m.train(change != "spectral_norm")
    x = torch.randn(5, 2, 3)
    got, want = _run_twice(ours, x), _run_twice(theirs, x)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("change", ["orthogonal", "weight_norm", "prune", "old-weight_norm"])
@pytest.mark.parametrize(
    ("family", "kw"),
    [("LSTM", {"norm": "layer"}), ("GRU", {"weight_drop": 0.3}), ("LSTM", {"zoneout": 0.1, "proj_size": 2})],
)
def test_a_changed_weight_with_an_option_gives_the_loops_numbers_on_the_fused_kernels(family, kw, change):
    """The fused (C++) kernels read the computed weight (the pruning mask applied), as the loop."""
    results = []
    for impl in ("fused", "loop"):
        torch.manual_seed(0)
        m = getattr(rnnkit, family)(3, 4, 2, impl=impl, **kw)
        CHANGES[change](m, "weight_hh_l0")
        torch.manual_seed(2)  # the same weight-drop and zoneout masks in both
        results.append(_run_twice(m, torch.randn(5, 2, 3)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", ["auto", "fused"])
@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_pruning_reaches_the_float32_kernels(family, impl):
    """At a size where the float32 kernels pack the recurrent weight for oneDNN: the pruned
    layer equals one whose weight is the masked weight itself."""
    f32 = torch.float32
    torch.manual_seed(0)
    pruned = getattr(rnnkit, family)(32, 128, impl=impl, dtype=f32)
    plain = getattr(rnnkit, family)(32, 128, impl=impl, dtype=f32)
    x = torch.randn(4, 64, 32, dtype=f32)
    pruned(x)  # a call before pruning
    prune.l1_unstructured(pruned, "weight_hh_l0", amount=0.7)
    plain.load_state_dict(
        {k.replace("_orig", ""): v for k, v in pruned.state_dict().items() if "mask" not in k}
    )
    with torch.no_grad():
        plain.weight_hh_l0.mul_(pruned.weight_hh_l0_mask)
    torch.testing.assert_close(pruned(x)[0], plain(x)[0], rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_quantize_dynamic_leaves_the_layers_in_float(family, impl):
    """They are not torch.nn's types, so ``quantize_dynamic`` passes them by (README): the
    layer is a copy of the same type computing the same numbers (no crash, nothing quantized)."""
    f32 = torch.float32
    torch.manual_seed(0)
    layer = getattr(rnnkit, family)(3, 4, impl=impl, dtype=f32)
    model = nn.Sequential(layer, nn.Identity())
    x = torch.randn(5, 2, 3, dtype=f32)
    want = layer(x)[0]
    types = {nn.LSTM, nn.GRU, nn.RNN, nn.Linear}
    q = torch.ao.quantization.quantize_dynamic(model, types, dtype=torch.qint8)
    assert q[0] is not layer and type(q[0]) is type(layer)  # (a deep copy, in float)
    torch.testing.assert_close(q[0](x)[0], want, rtol=0, atol=0)
    assert all(p.dtype == f32 for p in q.parameters())


def _state(family: str, batch: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    h = torch.randn(2 * 2, batch, 4)
    return (h, torch.randn_like(h)) if family == "LSTM" else h


def _assert_same(got, want) -> None:
    if isinstance(want, PackedSequence):
        for a, b in zip(got[1:], want[1:], strict=True):  # batch sizes and both index maps
            assert (a is None and b is None) or torch.equal(a, b)
        got, want = got.data, want.data
    if isinstance(want, tuple):
        for a, b in zip(got, want, strict=True):
            _assert_same(a, b)
        return
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


INPUTS = {  # name -> f(list of (L_i, H_in) sequences): a layer's input
    "pack_sequence-sorted": lambda s: pack_sequence(sorted(s, key=len, reverse=True)),
    "pack_sequence-unsorted": lambda s: pack_sequence(s, enforce_sorted=False),
    "packed-double": lambda s: pack_sequence([t.float() for t in s], enforce_sorted=False).double(),
    "packed-to": lambda s: pack_sequence([t.float() for t in s], enforce_sorted=False).to(torch.float64),
    "pad_sequence": lambda s: pad_sequence(s),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("inputs", list(INPUTS))
@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN"])
def test_rnn_utils_inputs_as_torch_nn(family, inputs, with_hx, impl):
    """Outputs (unpacked: ``unpack_sequence``), states and the packed output's index maps; a
    given ``hx`` is in the caller's order, its rows follow ``sorted_indices`` as on torch.nn."""
    torch.manual_seed(0)
    theirs = getattr(nn, family)(3, 4, 2, bidirectional=True)
    ours = getattr(rnnkit, family)(3, 4, 2, bidirectional=True, impl=impl)
    ours.load_state_dict(theirs.state_dict())
    seqs = [torch.randn(n, 3) for n in (3, 5, 2)]
    x, hx = INPUTS[inputs](seqs), _state(family, 3) if with_hx else None
    (out, state), (ref, ref_state) = ours(x, hx), theirs(x, hx)
    _assert_same(out, ref)
    _assert_same(state, ref_state)
    if isinstance(ref, PackedSequence):
        for a, b in zip(unpack_sequence(out), unpack_sequence(ref), strict=True):
            _assert_same(a, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("family", ["LSTM", "GRU"])
def test_lengths_and_unpad_sequence_as_a_packed_torch_nn_call(family, impl):
    torch.manual_seed(0)
    theirs = getattr(nn, family)(3, 4, 2, bidirectional=True, batch_first=True)
    ours = getattr(rnnkit, family)(3, 4, 2, bidirectional=True, batch_first=True, impl=impl)
    ours.load_state_dict(theirs.state_dict())
    seqs, lengths = [torch.randn(n, 3) for n in (3, 5, 2)], torch.tensor([3, 5, 2])
    x, hx = pad_sequence(seqs, batch_first=True), _state(family, 3)
    out, state = ours(x, hx, lengths)
    ref, ref_state = theirs(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), hx)
    _assert_same(state, ref_state)
    ref = pad_packed_sequence(ref, batch_first=True)[0]
    for a, b in zip(unpad_sequence(out, lengths, True), unpad_sequence(ref, lengths, True), strict=True):
        _assert_same(a, b)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    ("family", "kw"),
    [
        ("LSTM", {"norm": "layer", "bidirectional": True}),
        ("GRU", {"zoneout": 0.2}),
        ("LSTM", {"norm": "batch", "max_len": 6}),
        ("LSTM", {"peephole": True, "proj_size": 2, "bidirectional": True}),
    ],
)
def test_unsorted_packed_batch_with_hx_equals_each_sequence_alone_with_an_option(family, kw, impl):
    """With an option torch.nn lacks (evaluation mode: deterministic), each sequence of an
    unsorted packed batch and its ``hx`` rows give what the sequence alone gives."""
    torch.manual_seed(0)
    m = getattr(rnnkit, family)(3, 4, 2, impl=impl, **kw).eval()
    seqs = [torch.randn(n, 3) for n in (3, 5, 2)]
    hx = tuple(torch.randn(s) for s in m.state_shapes(3))
    one = lambda s: s if len(s) > 1 else s[0]  # noqa: E731 - (h, c) or h alone
    out, state = m(pack_sequence(seqs, enforce_sorted=False), one(hx))
    state = state if isinstance(state, tuple) else (state,)
    for b, (seq, got) in enumerate(zip(seqs, unpack_sequence(out), strict=True)):
        alone, alone_state = m(seq, one(tuple(h[:, b] for h in hx)))
        alone_state = alone_state if isinstance(alone_state, tuple) else (alone_state,)
        torch.testing.assert_close(got, alone, rtol=1e-10, atol=1e-12)
        for s, a in zip(state, alone_state, strict=True):
            torch.testing.assert_close(s[:, b], a, rtol=1e-10, atol=1e-12)
