"""The fused path with regularizers (and the peephole LSTM) against the reference loop, under
the same seed.

Recurrent dropout and zoneout (their masks are inputs of the fused kernels), weight-drop
(the dropped ``W_hh`` is what the kernels receive) and locked dropout (between layers):
float64, forward and all gradients, dense and packed, bidirectional, multi-layer, training
and evaluation, on both fused backends. Both paths draw the call's masks from torch's RNG in
the same order, so they must agree to rounding.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import dispatch

FAMILIES = {
    "lstm": (rnnkit.LSTM, {}),
    "lstm_proj": (rnnkit.LSTM, {"proj_size": 2}),
    "lstm_peephole": (rnnkit.LSTM, {"peephole": True}),
    "gru": (rnnkit.GRU, {}),
    "rnn": (rnnkit.RNN, {"nonlinearity": "relu"}),
}
REGS = [
    {"recurrent_dropout": 0.4},
    {"weight_drop": 0.5, "locked_dropout": 0.3},
    {"recurrent_dropout": 0.3, "weight_drop": 0.3, "locked_dropout": 0.2},
    {"zoneout": 0.3},
    {"zoneout": 0.25, "recurrent_dropout": 0.3},
]


def _pair(family, reg, bidir, training=True):
    cls, kw = FAMILIES[family]
    torch.manual_seed(0)
    a = cls(3, 4, 2, bidirectional=bidir, impl="fused", **kw, **reg).train(training)
    b = cls(3, 4, 2, bidirectional=bidir, impl="loop", **kw, **reg).train(training)
    for name, w in a.named_parameters():
        if "peephole" in name:  # initialized to zero: make the peepholes matter
            w.data.uniform_(-0.5, 0.5)
    b.load_state_dict(a.state_dict())
    return a, b


def _outputs(m, x, seed):
    torch.manual_seed(seed)
    out, st = m(x)
    out = out.data if hasattr(out, "batch_sizes") else out
    return [out, *(st if isinstance(st, tuple) else (st,))]


# (bidirectional, packed): both layouts and both directions, in two combinations to stay fast
CASES = [
    (f, r, bidir, packed, True)
    for f, r in itertools.product(FAMILIES, REGS)
    for bidir, packed in ((False, True), (True, False))
]
CASES += [(f, REGS[-1], True, packed, False) for f in FAMILIES for packed in (False, True)]  # eval


@pytest.mark.parametrize("family,reg,bidir,packed,training", CASES)
def test_fused_equals_loop_under_same_seed(backend, family, reg, bidir, packed, training):
    a, b = _pair(family, reg, bidir, training)
    assert dispatch.select(a, torch.zeros(1, 1, 3)) == "fused"
    data = torch.randn(5, 3, 3)
    if packed:
        x = pack_padded_sequence(data, torch.tensor([2, 5, 3]), enforce_sorted=False)
        x.data.requires_grad_(True)
        leaf = x.data
    else:
        x = leaf = data.requires_grad_(True)
    ta, tb = _outputs(a, x, 7), _outputs(b, x, 7)
    for u, v in zip(ta, tb):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)
    ws = [torch.randn_like(t) for t in ta]
    ga = torch.autograd.grad(ta, [leaf, *a.parameters()], ws)
    gb = torch.autograd.grad(tb, [leaf, *b.parameters()], ws)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)


def test_recurrent_dropout_changes_the_result():
    """The mask really reaches the kernels (a dropped run differs from an undropped one)."""
    a, _ = _pair("gru", {"recurrent_dropout": 0.5}, False)
    x = torch.randn(4, 2, 3)
    torch.manual_seed(1)
    dropped = a(x)[0]
    plain = a.eval()(x)[0]
    assert not torch.allclose(dropped, plain)


def _float32_zoneout_pair(hidden, zo):
    torch.manual_seed(0)
    a = rnnkit.LSTM(5, hidden, impl="fused", zoneout=zo, dtype=torch.float32)
    b = rnnkit.LSTM(5, hidden, impl="loop", zoneout=zo, dtype=torch.float32)
    b.load_state_dict(a.state_dict())
    return a, b


def _float32_agree(a, b, x, leaf):
    ta, tb = _outputs(a, x, 3), _outputs(b, x, 3)
    for u, v in zip(ta, tb, strict=True):
        torch.testing.assert_close(u, v, atol=2e-5, rtol=2e-4)
    ws = [torch.randn_like(t) for t in ta]
    ga = torch.autograd.grad(ta, [leaf, *a.parameters()], ws)
    gb = torch.autograd.grad(tb, [leaf, *b.parameters()], ws)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, atol=5e-4, rtol=1e-3)


@pytest.mark.parametrize("hidden", [48, 45])
@pytest.mark.parametrize("zo", [(0.3, 0.2), (0.0, 0.3), (0.3, 0.0)])
@pytest.mark.parametrize("packed", [False, True])
def test_float32_zoneout_masks_as_bits_equal_loop(num_threads, hidden, zo, packed):
    """float32 on the compiled kernels, where the LSTM reads zoneout's 0/1 masks as bits
    (csrc/lstm_row.h, ZoneoutBits, on AVX-512), on two threads (blocks of units; 45 units
    leave a block a partial word), dense and packed: against the loop."""
    from .test_fused_kernels import require_ext

    require_ext()
    num_threads(2)
    a, b = _float32_zoneout_pair(hidden, zo)
    data = torch.randn(9, 40, 5, dtype=torch.float32)
    if packed:
        x = pack_padded_sequence(data, torch.randint(1, 10, (40,)), enforce_sorted=False)
        x.data.requires_grad_(True)
        leaf = x.data
    else:
        x = leaf = data.requires_grad_(True)
    _float32_agree(a, b, x, leaf)


@pytest.mark.parametrize("weight", [0.5, 0.0])
def test_float32_zoneout_weights_other_than_0_and_1(monkeypatch, num_threads, weight):
    """Zoneout weights that are not all 0 or 1 (a replaced sample_mask) cannot be bits: the
    kernels read them as floats (one 0.5 among 0s and 1s, or all 0.5)."""
    from rnnkit import regularizers

    from .test_fused_kernels import require_ext

    require_ext()
    num_threads(2)
    draw = regularizers.sample_mask

    def mask(kind, shape, p, like):
        m = draw(kind, shape, p, like)
        if kind == "zoneout":
            half = torch.tensor(0.5, dtype=m.dtype)
            m = m.fill_(0.5) if weight == 0.5 else m.index_put_((torch.tensor(0),), half)
        return m

    monkeypatch.setattr(regularizers, "sample_mask", mask)
    a, b = _float32_zoneout_pair(48, (0.3, 0.2))
    x = torch.randn(6, 40, 5, dtype=torch.float32, requires_grad=True)
    _float32_agree(a, b, x, x)
