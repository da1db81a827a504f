"""Zoneout in evaluation on the fused kernels: the expectation ``p`` reaches them as one row
broadcast over all ``N`` rows (a stride-0 view; the C++ kernels read it as one ``(B, S)`` block
that every step shares), not as an ``(N, S)`` tensor. Against the same weights materialized, the
form training masks have: identical outputs, final states and gradients, for every kernel
family, dense, packed, B = 1 and T = 1, both directions, on both fused backends."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import kernels

LAYERS = {
    "lstm": (rnnkit.LSTM, {}),
    "lstm_proj": (rnnkit.LSTM, {"proj_size": 3}),
    "lstm_peephole": (rnnkit.LSTM, {"peephole": True}),
    "lstm_nig": (rnnkit.LSTM, {"input_gate": False}),  # the Greff layouts' kernels
    "lstm_fgr": (rnnkit.LSTM, {"full_gate_recurrence": True}),  # zoneout on the gate state too
    "lstm_layernorm": (rnnkit.LSTM, {"norm": "layer"}),
    "lstm_layernorm_proj": (rnnkit.LSTM, {"norm": "layer", "proj_size": 3}),
    "lstm_batchnorm": (rnnkit.LSTM, {"norm": "batch"}),
    "gru": (rnnkit.GRU, {}),
    "gru_mut1": (rnnkit.GRU, {"variant": "mut1"}),
    "gru_layernorm": (rnnkit.GRU, {"norm": "layer"}),
    "rnn": (rnnkit.RNN, {}),
    "rnn_layernorm": (rnnkit.RNN, {"norm": "layer"}),
}
SIZES = {"dense": [3, 3, 3, 3], "packed": [3, 3, 2, 1], "B=1": [1, 1, 1], "T=1": [3]}


def _run(cell, params, x, bsz, h0, reverse, probs, masks):
    out, fin = kernels.run_layer_direction(cell, params, x, bsz, h0, reverse, None, probs, masks, False)
    return [out, *fin]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", list(SIZES))
@pytest.mark.parametrize("name", list(LAYERS))
def test_evaluation_weights_as_one_broadcast_row(backend, name, layout, reverse):
    cls, kw = LAYERS[name]
    torch.manual_seed(0)
    layer = cls(4, 5, zoneout=0.3, **kw).eval()
    for n, w in layer.named_parameters():
        if "peephole" in n:  # initialized to zero: make the peepholes matter
            w.data.uniform_(-0.5, 0.5)
    cell, params = layer.cells[0], layer.layer_params(0, 0)
    bsz, probs = SIZES[layout], layer.zoneout_probs[0]
    T, B = len(bsz), bsz[0]
    x = torch.randn(sum(bsz), 4, requires_grad=True)
    h0 = tuple(torch.randn(B, s, requires_grad=True) for s in cell.state_sizes())
    # what a training mask of all-p looks like: one (T, B, S) tensor per state component
    full = [torch.full((T, B, s), p) if p else None for s, p in zip(cell.state_sizes(), probs)]
    got = _run(cell, params, x, bsz, h0, reverse, probs, None)
    want = _run(cell, params, x, bsz, h0, reverse, probs, full)
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, atol=0, rtol=0)
    ws = [torch.randn_like(t) for t in got]
    leaves = [x, *h0, *(w for w in params.values() if w.requires_grad)]  # (not batch norm's statistics)
    for u, v in zip(torch.autograd.grad(got, leaves, ws), torch.autograd.grad(want, leaves, ws)):
        torch.testing.assert_close(u, v, atol=0, rtol=0)


def test_evaluation_zoneout_changes_the_result(backend):
    """The broadcast weights really reach the kernels (against no zoneout)."""
    torch.manual_seed(0)
    layer = rnnkit.LSTM(4, 5, zoneout=0.3).eval()
    cell, params = layer.cells[0], layer.layer_params(0, 0)
    x, h0 = torch.randn(8, 4), (torch.randn(2, 5), torch.randn(2, 5))
    zoned = _run(cell, params, x, [2] * 4, h0, False, layer.zoneout_probs[0], None)
    plain = _run(cell, params, x, [2] * 4, h0, False, None, None)
    assert not torch.allclose(zoned[0], plain[0])
