"""torch.nn.RNNBase's helper methods and weight lists on rnnkit's layers, against torch.nn itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit

CONFIGS = [  # (family, kwargs)
    ("LSTM", {}),
    ("LSTM", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"proj_size": 3, "num_layers": 2}),
    ("LSTM", {"bias": False, "batch_first": True}),
    ("GRU", {"num_layers": 2, "bidirectional": True, "batch_first": True}),
    ("RNN", {"nonlinearity": "relu", "num_layers": 3}),
]
ID = [f"{f}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for f, kw in CONFIGS]


def pair(family: str, kwargs: dict):
    torch.manual_seed(0)
    return getattr(nn, family)(4, 6, **kwargs), getattr(rnnkit, family)(4, 6, **kwargs)


def states(theirs: nn.RNNBase, batch: int):
    D = 2 if theirs.bidirectional else 1
    h = torch.randn(theirs.num_layers * D, batch, theirs.proj_size or theirs.hidden_size)
    if isinstance(theirs, nn.LSTM):
        return h, torch.randn(theirs.num_layers * D, batch, theirs.hidden_size)
    return h


@pytest.mark.parametrize("family, kwargs", CONFIGS, ids=ID)
def test_weight_lists_match_torch(family, kwargs):
    theirs, ours = pair(family, kwargs)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert ours._all_weights == theirs._all_weights
    assert [w.shape for w in ours._flat_weights] == [w.shape for w in theirs._flat_weights]
    assert all(w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names))


def test_weight_lists_hold_option_parameters_after_torch_names():
    ours = rnnkit.LSTM(4, 6, norm="layer")
    names = ours._flat_weights_names
    assert names[:4] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert "weight_ln_ih_l0" in names and len(names) == len(list(ours.parameters()))
    bn = rnnkit.LSTM(4, 6, norm="batch", max_len=5)  # running statistics are buffers, not weights
    assert not any("running" in n for n in bn._flat_weights_names)
    # all_weights holds the tensors _all_weights names, as torch.nn's (it held the 6 buffers too)
    (weights,), (names,) = bn.all_weights, bn._all_weights
    assert len(weights) == len(names) == 8
    assert all(w is getattr(bn, n) for w, n in zip(weights, names))


@pytest.mark.parametrize("family, kwargs", CONFIGS, ids=ID)
@pytest.mark.parametrize("packed", [False, True])
def test_expected_sizes_and_good_args_match_torch(family, kwargs, packed):
    theirs, ours = pair(family, kwargs)
    x = torch.randn(3, 5, 4)  # (T, B) or (B, T): 3 or 5 sequences
    batch_sizes = None
    if packed:
        data = pack_padded_sequence(x, torch.tensor([5, 4, 2] if theirs.batch_first else [3, 3, 2, 1, 1]),
                                    batch_first=theirs.batch_first)  # fmt: skip
        x, batch_sizes = data.data, data.batch_sizes
    expected = theirs.get_expected_hidden_size(x, batch_sizes)
    assert tuple(ours.get_expected_hidden_size(x, batch_sizes)) == expected
    if family == "LSTM":
        want = theirs.get_expected_cell_size(x, batch_sizes)
        assert tuple(ours.get_expected_cell_size(x, batch_sizes)) == want
    else:
        assert not hasattr(ours, "get_expected_cell_size") and not hasattr(theirs, "get_expected_cell_size")
    hx = states(theirs, expected[1])
    assert theirs.check_forward_args(x, hx, batch_sizes) is None
    assert ours.check_forward_args(x, hx, batch_sizes) is None


@pytest.mark.parametrize("family, kwargs", CONFIGS, ids=ID)
def test_bad_args_raise_what_torch_raises(family, kwargs):
    theirs, ours = pair(family, kwargs)
    x = torch.randn(3, 5, 4)
    B = theirs.get_expected_hidden_size(x, None)[1]
    hx = states(theirs, B)
    wrong_batch = states(theirs, B + 1)
    other = torch.float32 if theirs.weight_ih_l0.dtype == torch.float64 else torch.float64
    cases = [  # (input, hidden, exception)
        (torch.randn(3, 4), hx, RuntimeError),  # 2-D dense input
        (torch.randn(3, 5, 7), hx, RuntimeError),  # wrong feature size
        (x.to(other), hx, ValueError),  # dtype mismatch
        (x, wrong_batch, RuntimeError),  # h (and c) for another batch
    ]
    if family == "LSTM":
        cases.append((x, (hx[0], wrong_batch[1]), RuntimeError))  # c alone wrong
    for inp, hidden, exc in cases:
        with pytest.raises(exc) as want:
            theirs.check_forward_args(inp, hidden, None)
        with pytest.raises(exc) as got:
            ours.check_forward_args(inp, hidden, None)
        if "size" in str(want.value) and "Expected" in str(want.value):  # the same message
            assert str(got.value) == str(want.value)


@pytest.mark.parametrize("family, kwargs", CONFIGS, ids=ID)
def test_permute_hidden_matches_torch(family, kwargs):
    theirs, ours = pair(family, kwargs)
    hx, perm = states(theirs, 5), torch.tensor([4, 0, 3, 1, 2])
    assert ours.permute_hidden(hx, None) is hx
    want, got = theirs.permute_hidden(hx, perm), ours.permute_hidden(hx, perm)
    for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_permute_hidden_of_a_list_state_matches_torch():
    # LSTM.forward takes hx as a list [h, c]; torch.nn's permute_hidden reorders it into a tuple
    # (rnnkit's failed: "'list' object has no attribute 'index_select'")
    theirs, ours = pair("LSTM", {})
    hx, perm = list(states(theirs, 5)), torch.tensor([4, 0, 3, 1, 2])
    want, got = theirs.permute_hidden(hx, perm), ours.permute_hidden(hx, perm)
    assert type(got) is type(want) is tuple
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_weight_lists_keep_a_parameter_replaced_by_a_tensor():
    # the AWD-LSTM / fastai WeightDrop trick: the raw parameter is deleted and a plain tensor set
    # under its name before every call; torch.nn's weight lists keep the name
    theirs, ours = pair("LSTM", {})
    for m in (theirs, ours):
        w = m._parameters.pop("weight_hh_l0")
        m.weight_hh_l0 = w.detach() * 0.5
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert all(w is getattr(ours, n) for w, n in zip(ours._flat_weights, ours._flat_weights_names))
    assert len(ours._flat_weights) == len(theirs._flat_weights) == 4


def test_flat_weights_refreshed_as_code_for_torch_nn_does():
    # AWD-style weight drop refreshes torch's list after setting a weight by name; rnnkit's property
    # had no setter: AttributeError
    theirs, ours = pair("LSTM", {"num_layers": 2})
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 3, 4)
    for m in (theirs, ours):
        raw = m._parameters.pop("weight_hh_l0")
        m.weight_hh_l0 = raw.detach() * 0.5
        m._flat_weights = [getattr(m, n) for n in m._flat_weights_names]
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    # a parametrized weight is computed anew at every read: the same numbers are taken too
    nn.utils.parametrizations.orthogonal(ours, "weight_hh_l1")
    ours._flat_weights = [getattr(ours, n) for n in ours._flat_weights_names]
    # another list torch.nn would run with, which rnnkit would not read: refused, naming what works
    with pytest.raises(rnnkit.RecurrentInputError, match=r"set it with setattr\(module, 'weight_ih_l0'"):
        ours._flat_weights = [w * 2 for w in ours._flat_weights]
    with pytest.raises(rnnkit.RecurrentInputError, match="must hold 8 tensors"):
        ours._flat_weights = []


@pytest.mark.parametrize("family", ["LSTM", "GRU"])
def test_init_flat_weights_after_replacing_a_weight_as_torch_nn(family):
    # code that replaces a weight by name calls torch's _init_flat_weights(): an AttributeError here
    theirs, ours = pair(family, {})
    ours.load_state_dict(theirs.state_dict())
    for m in (theirs, ours):
        w = m._parameters.pop("weight_hh_l0").detach() * 0.5
        m.register_parameter("weight_hh_l0", nn.Parameter(w))
        m._init_flat_weights()
    x = torch.randn(5, 3, 4)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", ["LSTM", "GRU"])
def test_weight_frozen_as_a_buffer_stays_listed_as_torch_nn(family):
    # a weight re-registered as a buffer (frozen, out of parameters()): torch.nn's name lists are
    # fixed at construction and it runs; rnnkit's lists dropped the name (read off _buffers at each
    # access), and the torch path's weight check failed: "zip() argument 2 is longer than argument 1"
    theirs, ours = pair(family, {"num_layers": 2})
    ours.load_state_dict(theirs.state_dict())
    names = ours._flat_weights_names
    for m in (theirs, ours):
        m.register_buffer("weight_hh_l1", m._parameters.pop("weight_hh_l1").detach() * 0.5)
    assert ours._flat_weights_names == theirs._flat_weights_names == names
    assert ours._all_weights == theirs._all_weights
    x = torch.randn(5, 3, 4)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    ours._flat_weights_names.clear()  # a copy: the kept lists are not the caller's
    assert ours._flat_weights_names == names and len(ours._all_weights[0]) == 4
