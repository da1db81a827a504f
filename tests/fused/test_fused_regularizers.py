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
