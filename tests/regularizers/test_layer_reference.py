"""Regularized layers against the hand-written step-by-step reference (float64, forward and
every gradient), dense, bidirectional, stacked, packed with ``enforce_sorted=False``."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit

from .reference import grads, recorder, reference  # noqa: F401 - recorder is a fixture

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

LAYERS = {"rnn": rnnkit.RNN, "lstm": rnnkit.LSTM, "gru": rnnkit.GRU}
OPTIONS = [
    {"recurrent_dropout": 0.5},
    {"weight_drop": 0.5},
    {"zoneout": 0.4},
    {"locked_dropout": 0.5},
    {"recurrent_dropout": 0.3, "weight_drop": 0.4, "zoneout": 0.3, "locked_dropout": 0.5},
]


def _h0(layer, B, requires_grad=True):
    shapes = layer.state_shapes(B)
    return tuple(torch.randn(s, requires_grad=requires_grad) for s in shapes)


def _hx(layer, h0):
    return h0 if len(h0) > 1 else h0[0]


def _check(layer, x, h0, log, got_out, got_final, lengths=None):
    exp_out, exp_final = reference(layer, x, h0, log, lengths)
    torch.testing.assert_close(got_out, exp_out, atol=1e-10, rtol=1e-10)
    got_final = got_final if isinstance(got_final, tuple) else (got_final,)
    for u, v in zip(got_final, exp_final):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)
    leaves = [x, *h0, *layer.parameters()]
    g_got = grads([got_out, *got_final], leaves)
    g_exp = grads([exp_out, *exp_final], leaves)
    names = ["x", *(f"h0[{i}]" for i in range(len(h0))), *dict(layer.named_parameters())]
    for u, v, name in zip(g_got, g_exp, names):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("impl", ["auto", "loop"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "+".join(o))
@pytest.mark.parametrize("family", list(LAYERS))
def test_dense_matches_reference(recorder, family, opts, impl):  # noqa: F811
    torch.manual_seed(0)
    layer = LAYERS[family](3, 4, 2, bidirectional=True, impl=impl, **opts).train()
    x = torch.randn(5, 3, 3, requires_grad=True)
    h0 = _h0(layer, 3)
    out, final = layer(x, _hx(layer, h0))
    _check(layer, x, h0, recorder, out, final)


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "+".join(o))
@pytest.mark.parametrize("family", list(LAYERS))
def test_packed_unsorted_matches_reference(recorder, family, opts):  # noqa: F811
    """Mask rows follow the sequence, not its position in the sorted packed batch."""
    torch.manual_seed(1)
    layer = LAYERS[family](2, 3, 2, bidirectional=True, **opts).train()
    lengths = torch.tensor([2, 5, 1, 4])
    x = torch.randn(5, 4, 2, requires_grad=True)
    h0 = _h0(layer, 4)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, final = layer(packed, _hx(layer, h0))
    out, _ = pad_packed_sequence(out, total_length=5)
    _check(layer, x, h0, recorder, out, final, lengths)


@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_keyword_and_batch_first(recorder, batch_first):  # noqa: F811
    torch.manual_seed(2)
    opts = OPTIONS[-1]
    layer = rnnkit.LSTM(2, 3, 3, batch_first=batch_first, **opts).train()
    lengths = torch.tensor([3, 4, 1])
    x = torch.randn(4, 3, 2, requires_grad=True)
    h0 = _h0(layer, 3)
    xin = x.transpose(0, 1) if batch_first else x
    out, final = layer(xin, h0, lengths=lengths)
    out = out.transpose(0, 1) if batch_first else out
    _check(layer, x, h0, recorder, out, final, lengths)


@pytest.mark.parametrize("zoneout", [0.3, (0.5, 0.2), (0.0, 0.6), {"c": 0.4}])
@pytest.mark.parametrize("impl", ["auto", "loop"])
def test_lstm_proj_matches_reference(recorder, zoneout, impl):  # noqa: F811
    """Zoneout of an LSTM with projections acts on the projected h (and on c)."""
    torch.manual_seed(3)
    layer = rnnkit.LSTM(
        3, 5, 2, proj_size=2, bidirectional=True, impl=impl, zoneout=zoneout, recurrent_dropout=0.3,
        weight_drop=0.2, locked_dropout=0.3,
    ).train()  # fmt: skip
    x = torch.randn(4, 2, 3, requires_grad=True)
    h0 = _h0(layer, 2)
    out, final = layer(x, h0)
    _check(layer, x, h0, recorder, out, final)


@pytest.mark.parametrize("family", list(LAYERS))
def test_zoneout_eval_is_the_expectation(recorder, family):  # noqa: F811
    torch.manual_seed(4)
    layer = LAYERS[family](3, 4, 2, bidirectional=True, zoneout=0.3, recurrent_dropout=0.5).eval()
    x = torch.randn(5, 2, 3, requires_grad=True)
    h0 = _h0(layer, 2)
    out, final = layer(x, _hx(layer, h0))
    assert recorder == []  # nothing is drawn in evaluation
    _check(layer, x, h0, recorder, out, final)


def test_lstm_zoneout_pair_is_c_then_h(recorder):  # noqa: F811
    """``zoneout=(p_c, p_h)`` follows Krueger et al.'s order; the state is (h, c)."""
    layer = rnnkit.LSTM(2, 3, zoneout=(0.25, 0.75))
    assert layer.zoneout_probs == [(0.75, 0.25)]


def test_unbatched_matches_reference(recorder):  # noqa: F811
    torch.manual_seed(5)
    layer = rnnkit.GRU(2, 3, 2, bidirectional=True, **OPTIONS[-1]).train()
    x = torch.randn(4, 2, requires_grad=True)
    h0 = torch.randn(4, 3, requires_grad=True)
    out, final = layer(x, h0)
    exp_out, (exp_final,) = reference(layer, x.unsqueeze(1), (h0.unsqueeze(1),), recorder)
    torch.testing.assert_close(out, exp_out[:, 0])
    torch.testing.assert_close(final, exp_final[:, 0])
