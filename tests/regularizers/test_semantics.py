"""Semantics of the layer options: off in eval, reproducible and redrawn in training, shared
over time where the method says so, drop rates, gradient support, fast path, validation."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import dispatch

from .reference import recorder  # noqa: F401 - fixture

PAIRS = {"rnn": (rnnkit.RNN, nn.RNN), "lstm": (rnnkit.LSTM, nn.LSTM), "gru": (rnnkit.GRU, nn.GRU)}
DROPS = [{"recurrent_dropout": 0.5}, {"weight_drop": 0.5}, {"locked_dropout": 0.5}]
ALL = {"recurrent_dropout": 0.3, "weight_drop": 0.4, "locked_dropout": 0.5, "zoneout": 0.2}


REGULARIZERS = {"recurrent_dropout", "weight_drop", "locked_dropout", "zoneout"}


def _pair(family, *args, **kw):
    """rnnkit layer with the options in ``kw``, and torch's with the same weights, none."""
    torch.manual_seed(0)
    ours = PAIRS[family][0](*args, **kw)
    torch.manual_seed(0)
    return ours, PAIRS[family][1](*args, **{k: v for k, v in kw.items() if k not in REGULARIZERS})


@pytest.mark.parametrize("opts", DROPS, ids=lambda o: next(iter(o)))
@pytest.mark.parametrize("family", list(PAIRS))
def test_eval_is_off_deterministic_and_equals_torch(family, opts):
    ours, theirs = _pair(family, 3, 4, 2, bidirectional=True, **opts)
    ours.eval(), theirs.eval()
    x = torch.randn(5, 2, 3)
    rng = torch.get_rng_state()
    a, b = ours(x), ours(x)
    assert torch.equal(rng, torch.get_rng_state())  # nothing drawn
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, theirs(x))


@pytest.mark.parametrize("family", list(PAIRS))
def test_train_reproducible_with_seed_and_redrawn_each_call(family):
    layer = PAIRS[family][0](3, 4, 2, bidirectional=True, **ALL).train()
    x = torch.randn(6, 3, 3)
    torch.manual_seed(11)
    a = layer(x)[0]
    b = layer(x)[0]
    torch.manual_seed(11)
    c = layer(x)[0]
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert not torch.allclose(a, b)


def test_names_state_dict_parameters_unchanged_and_not_mutated():
    ours, theirs = _pair("lstm", 3, 4, 2, bidirectional=True, weight_drop=0.5, locked_dropout=0.3)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    ours.train()(torch.randn(4, 2, 3))[0].sum().backward()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is not None for p in ours.parameters())


@pytest.mark.parametrize(
    "opts,train_impl,eval_impl",
    [
        ({"weight_drop": 0.5}, "torch", "torch"),
        ({"locked_dropout": 0.5}, "torch", "torch"),
        ({"recurrent_dropout": 0.5}, "fused-or-loop", "torch"),
        ({"zoneout": 0.5}, "fused-or-loop", "fused-or-loop"),
    ],
)
def test_dispatch(opts, train_impl, eval_impl):
    layer = rnnkit.GRU(2, 3, 2, **opts)
    x = torch.randn(3, 1, 2)
    from rnnkit import kernels

    # the fused kernels take the masks (recurrent dropout, zoneout) when they are compiled
    fused_or_loop = "fused" if kernels.backend(x) == "ext" else "loop"
    train_impl, eval_impl = (fused_or_loop if i == "fused-or-loop" else i for i in (train_impl, eval_impl))
    assert dispatch.select(layer.train(), x) == train_impl
    assert dispatch.select(layer.eval(), x) == eval_impl


@pytest.mark.parametrize("family,bidir,packed", list(itertools.product(PAIRS, [False, True], [False, True])))
def test_fast_path_equals_loop_under_the_same_seed(family, bidir, packed):
    """Weight-drop and locked dropout on torch's kernels draw exactly the loop's masks."""
    cls = PAIRS[family][0]
    torch.manual_seed(0)
    fast = cls(2, 3, 3, bidirectional=bidir, weight_drop=0.5, locked_dropout=0.4).train()
    slow = cls(2, 3, 3, bidirectional=bidir, weight_drop=0.5, locked_dropout=0.4, impl="loop").train()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(4, 3, 2, requires_grad=True)
    outs = []
    for m in (fast, slow):
        inp = pack_padded_sequence(x, torch.tensor([2, 4, 3]), enforce_sorted=False) if packed else x
        torch.manual_seed(5)
        out, _ = m(inp)
        out = out.data if packed else out
        outs.append((out, *torch.autograd.grad(out.sum(), [x, *m.parameters()])))
    for u, v in zip(*outs):
        torch.testing.assert_close(u, v)


@settings(max_examples=20, deadline=None)
@given(
    family=st.sampled_from(list(PAIRS)),
    T=st.integers(1, 5),
    B=st.integers(1, 4),
    L=st.integers(1, 3),
    bidir=st.booleans(),
    batch_first=st.booleans(),
    wd=st.sampled_from([0.0, 0.3, 1.0]),
    ld=st.sampled_from([0.0, 0.5]),
)
def test_fast_path_equals_loop_property(family, T, B, L, bidir, batch_first, wd, ld):
    torch.set_default_dtype(torch.float64)
    kw = {"bidirectional": bidir, "batch_first": batch_first, "weight_drop": wd}
    kw["locked_dropout"] = ld if L > 1 else 0.0
    fast = PAIRS[family][0](2, 3, L, **kw).train()
    slow = PAIRS[family][0](2, 3, L, impl="loop", **kw).train()
    slow.load_state_dict(fast.state_dict())
    x = torch.randn((B, T, 2) if batch_first else (T, B, 2))
    torch.manual_seed(3)
    a = fast(x)
    torch.manual_seed(3)
    b = slow(x)
    torch.testing.assert_close(a, b)


def test_recurrent_mask_is_shared_over_time_observably():
    """ReLU RNN with W_ih = W_hh = I, zero bias, x_0 = 1 and x_t = 0 afterwards: with one
    mask m per sequence h_t = m^(t-1) ⊙ 1 (scaled), so the set of zero units stays the same
    for every t >= 1; a fresh mask per step would keep growing it."""
    H, B, T, p = 400, 3, 5, 0.5
    layer = rnnkit.RNN(H, H, nonlinearity="relu", recurrent_dropout=p).train()
    with torch.no_grad():
        layer.weight_ih_l0.copy_(torch.eye(H)), layer.weight_hh_l0.copy_(torch.eye(H))
        layer.bias_ih_l0.zero_(), layer.bias_hh_l0.zero_()
    x = torch.zeros(T, B, H)
    x[0] = 1
    out, _ = layer(x)
    kept = out[1] != 0
    for t in range(1, T):
        assert torch.equal(out[t] != 0, kept)
        torch.testing.assert_close(out[t][kept], torch.full_like(out[t][kept], (1 / (1 - p)) ** t))
    rate = kept.double().mean().item()  # statistical: keep rate 1 - p, B * H = 1200 draws
    assert abs(rate - (1 - p)) < 5 * (p * (1 - p) / (B * H)) ** 0.5
    assert not torch.equal(kept[0], kept[1])  # independent rows (sequences)


@pytest.mark.parametrize(
    "opts,kind,p",
    [
        ({"recurrent_dropout": 0.3}, "recurrent", 0.3),
        ({"weight_drop": 0.6}, "weight_drop", 0.6),
        ({"locked_dropout": 0.25}, "locked", 0.25),
        ({"zoneout": 0.2}, "zoneout", 0.2),
    ],
)
def test_mask_rates_and_values(recorder, opts, kind, p):  # noqa: F811
    layer = rnnkit.LSTM(16, 32, 2, bidirectional=True, **opts).train()
    layer(torch.randn(8, 16, 16))
    masks = [m for k, m in recorder if k == kind]
    assert masks and all(k == kind for k, _ in recorder)
    m = torch.cat([m.flatten() for m in masks])
    if kind == "zoneout":  # 1 = keep the previous value, probability p
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        rate = m.mean().item()
    else:
        assert set(m.unique().tolist()) <= {0.0, 1 / (1 - p)}
        rate = (m == 0).double().mean().item()
    assert abs(rate - p) < 5 * (p * (1 - p) / m.numel()) ** 0.5
    n_dir = 4 if kind != "locked" else 1  # 2 layers x 2 directions, 1 gap between layers
    assert len(masks) == n_dir * (2 if kind == "zoneout" else 1)


@pytest.mark.parametrize("family", list(PAIRS))
def test_gradients_only_through_kept_units(recorder, family):  # noqa: F811
    torch.manual_seed(0)
    layer = PAIRS[family][0](3, 8, 2, recurrent_dropout=0.5, weight_drop=0.5, locked_dropout=0.5).train()
    out, _ = layer(torch.randn(5, 1, 3))
    out.sum().backward()
    masks = dict((k, m) for k, m in recorder)
    wd = [m for k, m in recorder if k == "weight_drop"]
    rec = [m for k, m in recorder if k == "recurrent"]
    for k in range(2):  # W_hh: dropped entries (weight-drop) and dropped columns (recurrent)
        g = getattr(layer, f"weight_hh_l{k}").grad
        assert (g[wd[k] == 0] == 0).all() and (g[:, rec[k][0] == 0] == 0).all()
        assert (g[(wd[k] != 0) & (rec[k] != 0)] != 0).any()
    g = layer.weight_ih_l1.grad  # locked mask between layers: dropped input features
    assert (g[:, masks["locked"][0] == 0] == 0).all() and (g[:, masks["locked"][0] != 0] != 0).any()


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"weight_drop": 1.5}, "weight_drop must be a number in [0, 1], got 1.5"),
        ({"recurrent_dropout": -0.1}, "recurrent_dropout must be a number in [0, 1], got -0.1"),
        ({"locked_dropout": "0.5", "num_layers": 2}, "locked_dropout must be a number"),
        ({"zoneout": (0.1, 0.2)}, "zoneout=(p_c, p_h) needs a cell whose state holds h and c"),
        ({"zoneout": {"c": 0.1}}, "zoneout keys must be state names ('h',), got ['c']"),
        ({"zoneout": True}, "zoneout must be a number in [0, 1], got True"),
    ],
)
def test_bad_options(kw, msg):
    with pytest.raises(ValueError) as e:
        rnnkit.GRU(2, 3, **kw)
    assert msg in str(e.value)


@pytest.mark.parametrize("zoneout", [(0.1,), (0.1, 0.2, 0.3), []])
def test_zoneout_of_the_wrong_length_names_the_pair(zoneout):
    """A tuple of other than two probabilities on an LSTM said the cell's state lacked h and c
    while naming it ('h', 'c'): the error now says a pair is expected and how many were given."""
    with pytest.raises(ValueError) as e:
        rnnkit.LSTM(2, 3, zoneout=zoneout)
    msg = str(e.value)
    assert f"zoneout=(p_c, p_h) takes two probabilities, got {len(zoneout)}: {zoneout!r}" in msg
    assert "needs a cell whose state holds h and c" not in msg


def test_assigning_zoneout_takes_effect():
    """``layer.zoneout = ...`` after construction (to train on or evaluate without it) changed the
    repr alone: the layer and the step cell kept the probabilities derived at construction."""
    ours, theirs = _pair("lstm", 3, 4, 2, zoneout=0.5)
    ours.eval(), theirs.eval()
    x = torch.randn(5, 2, 3)
    assert not torch.allclose(ours(x)[0], theirs(x)[0])
    ours.zoneout = 0.0
    assert ours.zoneout_probs == [(0.0, 0.0)] * 2 and "zoneout" not in repr(ours)
    torch.testing.assert_close(ours(x), theirs(x))
    ours.zoneout = (0.3, 0.1)  # (p_c, p_h)
    assert ours.zoneout_probs == [(0.1, 0.3)] * 2
    with pytest.raises(ValueError, match="zoneout must be a number in \\[0, 1\\], got 1.5"):
        ours.zoneout = 1.5
    assert ours.zoneout == (0.3, 0.1) and ours.zoneout_probs == [(0.1, 0.3)] * 2  # unchanged
    old = rnnkit.GRU(3, 4, zoneout=0.25)  # as pickled before: the value under "zoneout"
    old.__dict__["zoneout"] = old.__dict__.pop("_zoneout_value")
    assert old.zoneout == 0.25 and "zoneout=0.25" in repr(old)
    cell = rnnkit.GRUCell(3, 4, zoneout=0.5).eval()
    cell.zoneout = {"h": 0.0}
    torch.manual_seed(0)
    ref = nn.GRUCell(3, 4).eval()
    ref.load_state_dict(cell.state_dict())
    torch.testing.assert_close(cell(x[0]), ref(x[0]))


def test_assigning_zoneout_to_a_torch_impl_layer_is_refused():
    """``layer.zoneout = 0.1`` on a layer built with ``impl="torch"`` was kept, and every later call
    (in eval too) failed; refused at the assignment as at construction (and as assigning
    ``impl="torch"`` to a zoneout layer), the old value kept."""
    m = rnnkit.LSTM(3, 4, impl="torch")
    with pytest.raises(ValueError, match="impl='torch' needs a configuration torch.nn supports"):
        m.zoneout = 0.1
    assert m.zoneout == 0.0 and m.zoneout_probs == [(0.0, 0.0)] and "zoneout" not in repr(m)
    old = rnnkit.GRU(3, 4, impl="torch")  # as pickled before: the value under "zoneout"
    old.__dict__["zoneout"] = old.__dict__.pop("_zoneout_value")
    with pytest.raises(ValueError, match="impl='torch'"):
        old.zoneout = {"h": 0.2}
    assert old.zoneout == 0.0 and old.zoneout_probs == [(0.0,)]
    x = torch.randn(5, 2, 3)
    m(x), old(x)  # still runs on torch's kernels
    m.zoneout = {"h": 0.0}  # no zoneout: accepted
    m(x)


@pytest.mark.parametrize(
    "make, name",
    [(lambda: rnnkit.LSTM(3, 4, num_layers=2), "locked_dropout"),
     (lambda: rnnkit.GRU(3, 4), "recurrent_dropout"), (lambda: rnnkit.LSTM(3, 4), "weight_drop"),
     (lambda: rnnkit.LSTMCell(3, 4), "recurrent_dropout"),
     (lambda: rnnkit.GRUCell(3, 4), "weight_drop"), (lambda: rnnkit.LockedDropout(0.5), "p"),
     (lambda: rnnkit.EmbeddingDropout(0.1), "p")],
    ids=["stack-locked", "stack-recurrent", "stack-weight-drop", "cell-recurrent", "cell-weight-drop",
         "LockedDropout", "EmbeddingDropout"],
)  # fmt: skip
def test_assigning_a_regularizer_probability_is_checked(make, name):
    """``layer.weight_drop = 2`` (or any regularizer's probability) was taken as a plain attribute
    and failed at the next training call in the mask generator's words ("bernoulli_mask: p must be
    in [0, 1]"), or never (a string in eval); checked on assignment, the value kept on refusal."""
    m = make()
    for bad in (2, -0.1, "0.5", True, float("nan")):
        with pytest.raises(ValueError, match=rf"^{name} must be a number in \[0, 1\], got "):
            setattr(m, name, bad)
    setattr(m, name, 0.25)
    assert getattr(m, name) == 0.25 and isinstance(getattr(m, name), float)


def test_a_layers_zoneout_dict_cannot_drift_from_its_probabilities():
    """The layer kept the caller's dict: changing it afterwards (or ``layer.zoneout["h"] = 0.5``)
    changed the repr, not the probabilities the layer runs. It keeps a read-only copy (pickled and
    deep-copied alike); a list is kept as a tuple."""
    import copy
    import pickle

    d = {"h": 0.1}
    m = rnnkit.GRU(3, 4, zoneout=d)
    d["h"] = 0.9
    assert m.zoneout == {"h": 0.1} and m.zoneout_probs == [(0.1,)] and "0.9" not in repr(m)
    with pytest.raises(TypeError, match="read-only: assign a new one"):
        m.zoneout["h"] = 0.5
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert other.zoneout == {"h": 0.1} and other.zoneout_probs == [(0.1,)]
        with pytest.raises(TypeError):
            other.zoneout.update(h=0.5)
    pair = [0.2, 0.1]
    lstm = rnnkit.LSTM(3, 4, zoneout=pair)
    pair[0] = 0.7
    assert lstm.zoneout == (0.2, 0.1) and lstm.zoneout_probs == [(0.1, 0.2)]
    assert not hasattr(rnnkit.LockedDropout.__new__(rnnkit.LockedDropout), "p")  # (an AttributeError)


def test_locked_dropout_single_layer_warns():
    with pytest.warns(UserWarning, match="locked_dropout acts between recurrent layers"):
        rnnkit.LSTM(2, 3, locked_dropout=0.5)


@pytest.mark.parametrize("p", [float("nan"), 1.5, -0.1])
def test_locked_dropout_single_layer_bad_value_is_an_error_not_the_warning(p):
    """The value check comes first: under warnings-as-errors the layer warning hid it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="locked_dropout"):
            rnnkit.LSTM(2, 3, locked_dropout=p)


def test_repr_lists_options():
    s = repr(rnnkit.LSTM(2, 3, 2, weight_drop=0.5, zoneout=(0.1, 0.2)))
    assert "weight_drop=0.5" in s and "zoneout=(0.1, 0.2)" in s and "recurrent_dropout" not in s


@pytest.mark.parametrize("impl", ["auto", "loop"])
def test_gradcheck_training_with_every_regularizer(impl):
    """Masks fixed by reseeding inside the function, so every evaluation draws the same ones."""
    layer = rnnkit.LSTM(2, 3, 2, bidirectional=True, impl=impl, proj_size=2, **ALL).train()
    x = torch.randn(3, 2, 2, requires_grad=True)
    h0 = torch.randn(4, 2, 2, requires_grad=True)
    c0 = torch.randn(4, 2, 3, requires_grad=True)

    def f(x, h, c):
        torch.manual_seed(0)
        out, (hn, cn) = layer(x, (h, c))
        return out, hn, cn

    assert torch.autograd.gradcheck(f, (x, h0, c0))
    w = layer.weight_hh_l0

    def g(w_hh):
        torch.manual_seed(0)
        return torch.func.functional_call(layer, {"weight_hh_l0": w_hh}, (x,))[0]

    assert torch.autograd.gradcheck(g, (w.detach().clone().requires_grad_(True),))
