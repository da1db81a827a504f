"""The zoo's options as an interface: reductions to torch.nn, parameter layout, errors,
repr and dispatch, and random combinations against the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import rnnkit
from rnnkit import dispatch

from . import reference as ref
from .helpers import LAYERS, as_hx, as_tuple, build, initial_state

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def _pair(family, opts, *args, impl="auto", **kw):
    torch.manual_seed(0)
    a = LAYERS[family](*args, impl=impl, **opts, **kw)
    torch.manual_seed(0)
    b = TORCH[family](*args, **kw)
    return a, b


# Options at values that reduce to torch's math: exactly torch.nn, on the reference loop.
REDUCING = [
    ("lstm", {"peephole": True}),  # peephole weights start at zero
    ("lstm", {"forget_bias": 0.0, "norm": None, "input_gate": True, "coupled_gates": False}),
    ("lstm", {"peephole": True, "proj_size": 2}),
    ("gru", {"reset_after": True, "norm": None, "variant": None}),
    ("rnn", {"norm": None}),
]


@pytest.mark.parametrize("family,opts", REDUCING)
def test_reducing_options_equal_torch_exactly(family, opts):
    opts = dict(opts)  # REDUCING's dict is shared: popping proj_size from it changed the table
    kw = {"proj_size": opts.pop("proj_size")} if "proj_size" in opts else {}
    a, b = _pair(family, opts, 3, 4, 2, bidirectional=True, impl="loop", **kw)
    del kw
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    # torch's parameters, in torch's order (extras follow each layer-direction's own) and
    # with the same values: the extras here draw nothing from the RNG.
    assert [k for k in pa if k in pb] == list(pb)
    for k in pb:
        assert torch.equal(pa[k], pb[k]), k
    x = torch.randn(5, 2, 3, requires_grad=True)
    ya, yb = a(x), b(x)
    for u, v in zip([ya[0], *as_tuple(ya[1])], [yb[0], *as_tuple(yb[1])]):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)
    ga = torch.autograd.grad(ya[0].sum(), [x, *(pa[k] for k in pb)])
    gb = torch.autograd.grad(yb[0].sum(), [x, *pb.values()])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)


def test_reducing_options_leaves_its_table_as_it_was():
    """The test above popped ``proj_size`` from REDUCING's own dict: a second run of it (or any
    other reader of the table) got an LSTM without projections."""
    opts = {"peephole": True, "proj_size": 2}
    test_reducing_options_equal_torch_exactly("lstm", opts)
    assert opts == {"peephole": True, "proj_size": 2}
    assert ("lstm", opts) in REDUCING  # as the parametrized runs above left it


def test_fgr_with_zero_gate_weights_is_the_classic_lstm():
    a, b = _pair("lstm", {"full_gate_recurrence": True}, 3, 4, 1, impl="loop")
    with torch.no_grad():
        a.weight_gg_l0.zero_()
    x = torch.randn(5, 2, 3)
    (ya, (_, c, g)), (yb, (_, cb)) = a(x), b(x)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(c, cb)
    assert g.shape == (1, 2, 12) and torch.all((g > 0) & (g < 1))


@pytest.mark.parametrize("family,opts", [("lstm", {}), ("lstm", {"forget_bias": 0.0}), ("gru", {})])
def test_default_options_stay_on_torch_kernels(family, opts):
    m = LAYERS[family](3, 4, **opts)
    assert dispatch.select(m, torch.randn(2, 1, 3)) == "torch"
    assert repr(m) == repr(TORCH[family](3, 4))


def test_forget_bias_is_init_only_and_keeps_torch_kernels():
    a, b = _pair("lstm", {"forget_bias": 1.0}, 3, 4, 2)
    assert dispatch.select(a, torch.randn(2, 1, 3)) == "torch"
    with torch.no_grad():
        for k in range(2):
            getattr(b, f"bias_ih_l{k}")[4:8] += 1.0
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb), na
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(a(x)[0], b(x)[0])
    assert "forget_bias=1.0" in repr(a)
    torch.manual_seed(0)
    cifg = rnnkit.LSTM(3, 4, coupled_gates=True, forget_bias=2.0)
    torch.manual_seed(0)
    plain = rnnkit.LSTM(3, 4, coupled_gates=True)
    shift = cifg.bias_ih_l0 - plain.bias_ih_l0  # CIFG rows are f, g, o: f comes first
    torch.testing.assert_close(shift, torch.tensor([2.0] * 4 + [0.0] * 8))
    assert cifg.bias_ih_l0.shape == (12,)


@pytest.mark.parametrize(
    "opts,shapes",
    [
        ({"peephole": True}, {"weight_ih_l0": (16, 3), "weight_peephole_l0": (12,)}),
        ({"input_gate": False}, {"weight_ih_l0": (12, 3), "weight_hh_l0": (12, 4), "bias_ih_l0": (12,)}),
        ({"forget_gate": False, "peephole": True}, {"weight_hh_l0": (12, 4), "weight_peephole_l0": (8,)}),
        ({"output_gate": False}, {"weight_ih_l0": (12, 3)}),
        ({"coupled_gates": True, "peephole": True}, {"weight_ih_l0": (12, 3), "weight_peephole_l0": (8,)}),
        ({"input_gate": False, "forget_gate": False, "output_gate": False}, {"weight_ih_l0": (4, 3)}),
        ({"full_gate_recurrence": True}, {"weight_gg_l0": (12, 12)}),
        ({"full_gate_recurrence": True, "coupled_gates": True}, {"weight_gg_l0": (8, 8)}),
        ({"norm": "layer"}, {"weight_ln_ih_l0": (16,), "bias_ln_hh_l0": (16,), "weight_ln_c_l0": (4,)}),
        ({"norm": "batch", "max_len": 7}, {"weight_bn_ih_l0": (16,), "bias_bn_c_l0": (4,)}),
        ({"input_activation": False, "output_activation": False}, {"weight_ih_l0": (16, 3)}),
    ],
)
def test_lstm_parameter_layout(opts, shapes):
    m = rnnkit.LSTM(3, 4, **opts)
    got = {k: tuple(v.shape) for k, v in m.named_parameters()}
    for k, s in shapes.items():
        assert got[k] == s, k
    removed = (
        (not opts.get("input_gate", True) or opts.get("coupled_gates", False))
        + (not opts.get("forget_gate", True))
        + (not opts.get("output_gate", True))
    )
    G = 4 * (4 - removed)  # the parameter count shows a removed gate
    base = sum(
        m.get_parameter(k).numel() for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    )
    assert base == G * (3 + 4 + 2)


def test_parameter_init_values():
    m = rnnkit.LSTM(3, 4, peephole=True, norm="batch", max_len=7)
    assert torch.all(m.weight_peephole_l0 == 0)
    assert torch.all(m.weight_bn_ih_l0 == 0.1) and torch.all(m.weight_bn_c_l0 == 0.1)
    assert torch.all(m.bias_bn_c_l0 == 0)
    assert m.running_mean_ih_l0.shape == (7, 16) and torch.all(m.running_var_c_l0 == 1)
    assert "running_mean_hh_l0" in m.state_dict() and "running_mean_hh_l0" not in dict(m.named_parameters())
    n = rnnkit.GRU(3, 4, norm="layer")
    assert torch.all(n.weight_ln_ih_l0 == 1) and torch.all(n.bias_ln_hh_l0 == 0)


@pytest.mark.parametrize(
    "variant,I,shapes",
    [
        (
            "mut1",
            3,
            {"weight_ih_l0": (8, 3), "weight_hh_l0": (8, 4), "bias_hh_l0": (8,), "weight_xproj_l0": (4, 3)},
        ),
        ("mut1", 4, {"weight_ih_l0": (8, 4), "bias_ih_l0": (12,)}),
        ("mut2", 3, {"weight_ih_l0": (8, 3), "weight_hh_l0": (12, 4), "weight_xproj_l0": (4, 3)}),
        ("mut3", 3, {"weight_ih_l0": (12, 3), "weight_hh_l0": (12, 4)}),
    ],
)
def test_mut_parameter_layout(variant, I, shapes):
    m = rnnkit.GRU(I, 4, variant=variant)
    got = {k: tuple(v.shape) for k, v in m.named_parameters()}
    for k, s in shapes.items():
        assert got[k] == s, k
    assert ("weight_xproj_l0" in got) == (variant in ("mut1", "mut2") and I != 4)


@pytest.mark.parametrize(
    "family,opts,match",
    [
        ("lstm", {"norm": "group"}, "norm must be one of"),
        ("lstm", {"coupled_gates": True, "input_gate": False}, "coupled_gates"),
        ("lstm", {"coupled_gates": True, "forget_gate": False}, "coupled_gates"),
        ("lstm", {"forget_bias": 1.0, "forget_gate": False}, "forget_bias"),
        ("lstm", {"forget_bias": 1.0, "bias": False}, "forget_bias"),
        ("lstm", {"forget_bias": "1"}, "forget_bias must be a number"),
        # a NaN forget bias made every output NaN, silently (an inf one saturates the gate)
        ("lstm", {"forget_bias": float("nan")}, "forget_bias must be a finite number, got nan"),
        ("lstm", {"forget_bias": float("inf")}, "forget_bias must be a finite number, got inf"),
        ("lstm", {"peephole": 1}, "peephole must be a bool"),
        ("lstm", {"max_len": 0, "norm": "batch"}, "max_len"),
        ("lstm", {"max_len": 10}, r"max_len=10 .* needs norm='batch', got norm=None"),
        ("lstm", {"max_len": 512, "norm": "layer"}, r"max_len=512 .* needs norm='batch', got norm='layer'"),
        (
            "lstm",
            {"input_gate": False, "forget_gate": False, "output_gate": False, "peephole": True},
            "peephole",
        ),
        (
            "lstm",
            {"coupled_gates": True, "output_gate": False, "forget_gate": True, "full_gate_recurrence": True},
            None,
        ),
        ("gru", {"norm": "batch"}, "norm must be one of"),
        ("gru", {"variant": "mut4"}, "variant must be one of"),
        ("gru", {"variant": "mut1", "norm": "layer"}, "standard GRU only"),
        ("gru", {"norm": "layer", "reset_after": False}, "reset_after=True"),
        ("gru", {"reset_after": "no"}, "reset_after must be a bool"),
        ("rnn", {"norm": "batch"}, "norm must be one of"),
    ],
)
def test_bad_options_raise_clear_errors(family, opts, match):
    if match is None:  # a legal combination: builds and runs
        LAYERS[family](3, 4, **opts)(torch.randn(2, 1, 3))
        return
    with pytest.raises(ValueError, match=match):
        LAYERS[family](3, 4, **opts)


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match="peepholes"):
        rnnkit.LSTM(3, 4, peepholes=True)


def test_impl_refused_at_construction_for_configurations_it_cannot_run():
    """impl='torch' for a custom cell or zoneout, impl='fused' where no fused kernel exists, were
    accepted and refused only at the first forward (zoneout's: in evaluation, too, well into a
    run); they are refused when the layer is built. Recurrent dropout with impl='torch' is refused
    in training only (in evaluation torch's kernels compute it)."""
    for make in (
        lambda: rnnkit.GRU(3, 4, reset_after=False, impl="torch"),
        lambda: rnnkit.LSTM(3, 4, zoneout=0.1, impl="torch"),
        lambda: rnnkit.GRU(3, 4, num_layers=2, zoneout={"h": 0.2}, impl="torch"),
    ):
        with pytest.raises(ValueError, match="impl='torch' needs a configuration torch.nn supports"):
            make()
    with pytest.raises(ValueError, match="impl='fused' has no fused kernel for this configuration"):
        rnnkit.LSTM(3, 4, norm="layer", coupled_gates=True, impl="fused")
    m = rnnkit.LSTM(3, 4, recurrent_dropout=0.3, impl="torch")
    m.eval()(torch.randn(2, 1, 3))
    with pytest.raises(ValueError, match="impl='torch'"):
        m.train()(torch.randn(2, 1, 3))


def test_impl_assigned_after_construction_is_checked():
    """layer.impl was a plain attribute: any value was taken, and every one but 'torch' and 'fused'
    ('Fused', 'fast') ran the reference loop silently. It is checked as at construction, and a value
    the layer cannot run is refused at once, the old one kept."""
    m = rnnkit.GRU(3, 4)
    for bad in ("Fused", "fast", None):
        with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'torch', 'fused', 'loop'\)"):
            m.impl = bad
        assert m.impl == "auto"
    m.impl = "loop"  # a possible value is taken
    assert m.impl == "loop" and "impl=loop" in repr(m)
    m = rnnkit.LSTM(3, 4, peephole=True)
    with pytest.raises(ValueError, match="impl='torch' needs a configuration torch.nn supports"):
        m.impl = "torch"
    assert m.impl == "auto"
    m = rnnkit.LSTM(3, 4, norm="layer", coupled_gates=True)
    with pytest.raises(ValueError, match="impl='fused' has no fused kernel"):
        m.impl = "fused"
    assert m.impl == "auto"


@pytest.mark.parametrize(
    "family,opts,text",
    [
        ("lstm", {"peephole": True, "norm": "layer"}, "LSTM(3, 4, peephole=True, norm='layer')"),
        ("lstm", {"norm": "batch"}, "LSTM(3, 4, norm='batch')"),
        ("lstm", {"norm": "batch", "max_len": 7}, "LSTM(3, 4, norm='batch', max_len=7)"),
        ("lstm", {"coupled_gates": True}, "LSTM(3, 4, coupled_gates=True)"),
        ("gru", {"reset_after": False}, "GRU(3, 4, reset_after=False)"),
        ("gru", {"variant": "mut2"}, "GRU(3, 4, variant='mut2')"),
        ("gru", {"variant": "mut2", "reset_after": True}, "GRU(3, 4, variant='mut2', reset_after=True)"),
        ("rnn", {"norm": "layer"}, "RNN(3, 4, norm='layer')"),
    ],
)
def test_repr_shows_options(family, opts, text):
    assert repr(LAYERS[family](3, 4, **opts)) == text


@st.composite
def lstm_options(draw):
    o = {
        "peephole": draw(st.booleans()),
        "norm": draw(st.sampled_from([None, "layer", "batch"])),
        "input_gate": draw(st.booleans()),
        "forget_gate": draw(st.booleans()),
        "output_gate": draw(st.booleans()),
        "input_activation": draw(st.booleans()),
        "output_activation": draw(st.booleans()),
        "full_gate_recurrence": draw(st.booleans()),
    }
    o["coupled_gates"] = o["input_gate"] and o["forget_gate"] and draw(st.booleans())
    if not (o["input_gate"] or o["forget_gate"] or o["output_gate"]):
        o["peephole"] = o["full_gate_recurrence"] = False
    return o


@settings(max_examples=20, deadline=None)
@given(opts=lstm_options(), proj=st.booleans(), L=st.integers(1, 2), bidir=st.booleans(), T=st.integers(1, 4))
def test_random_lstm_combinations_match_reference(opts, proj, L, bidir, T):
    torch.set_default_dtype(torch.float64)
    kw = {"proj_size": 2} if proj else {}
    m = build("lstm", opts, 3, 3, L, bidirectional=bidir, impl="loop", **kw)
    x = torch.randn(T, 2, 3)
    h0 = initial_state(m, 2)
    want_out, want_state, _ = ref.run_stack(m, "lstm", opts, x, h0)
    out, state = m(x, as_hx(h0))
    for u, v in zip([out, *as_tuple(state)], [want_out, *want_state]):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize(
    "cls,opts",
    [
        (rnnkit.LSTMCell, {"peephole": True}),
        (rnnkit.LSTMCell, {"norm": "layer"}),
        (rnnkit.LSTMCell, {"coupled_gates": True}),
        (rnnkit.LSTMCell, {"full_gate_recurrence": True, "output_gate": False}),
        (rnnkit.GRUCell, {"variant": "mut1"}),
        (rnnkit.GRUCell, {"variant": "mut2"}),
        (rnnkit.GRUCell, {"variant": "mut3"}),
    ],
)
def test_cell_options_take_hidden_size_zero(cls, opts):
    """``hidden_size=0``, as torch.nn's cells take it (and the standard cells here): the gate
    blocks were cut with ``split(H)``, which gives one piece for ``H = 0``, so a variant's step
    raised ``KeyError: 'g'`` (LSTM) or ``'z'``/``'n'`` (MUT1-3)."""
    cell = cls(3, 0, **opts)
    x = torch.randn(2, 3, requires_grad=True)
    out = as_tuple(cell(x))
    assert [tuple(s.shape) for s in out] == [(2, s) for s in cell.cell.state_sizes()]
    sum(s.sum() for s in out).backward()  # type: ignore[union-attr]
    unbatched = as_tuple(cell(x[0]))
    assert [tuple(s.shape) for s in unbatched] == [(s,) for s in cell.cell.state_sizes()]
