"""The "drop-in for torch.nn" promise where the bug hunts found rnnkit apart from torch.nn: torch's
own utilities (checkpoint, in-place ops on outputs, meta tensors, vmap) and the modules' interface
(constructor errors, cell attributes, repr)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
from torch.utils.checkpoint import checkpoint

import rnnkit

# options that run on the fused variant / norm kernels (one autograd node reading ctx.saved_tensors)
OPTIONS = [
    (rnnkit.LSTM, {"norm": "layer"}),
    (rnnkit.LSTM, {"norm": "layer", "proj_size": 2}),
    (rnnkit.GRU, {"norm": "layer"}),
    (rnnkit.RNN, {"norm": "layer"}),
    (rnnkit.LSTM, {"norm": "batch", "max_len": 5}),
    (rnnkit.LSTM, {"coupled_gates": True}),
    (rnnkit.LSTM, {"input_gate": False}),
    (rnnkit.GRU, {"reset_after": False}),
    (rnnkit.GRU, {"variant": "mut1"}),
]
OPTION_IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for cls, kw in OPTIONS]


@pytest.mark.parametrize("cls, kw", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("impl", ["auto", "fused"])
def test_non_reentrant_checkpoint_equals_no_checkpoint(cls, kw, impl):
    # non-reentrant checkpoint lets a backward unpack each saved tensor once
    torch.manual_seed(0)
    m = cls(3, 4, 2, impl=impl, dtype=torch.float64, **kw)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = []
    for ckpt in (False, True):
        xi = x.clone().requires_grad_()
        m.zero_grad()
        out = checkpoint(lambda t: m(t)[0], xi, use_reentrant=False) if ckpt else m(xi)[0]
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        grads.append([out.detach(), xi.grad, *(w.grad for w in m.parameters())])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _in_place_on_output(out):
    # what code around torch.nn does to an RNN's output: in-place dropout / activation / scaling
    data = out.data if isinstance(out, PackedSequence) else out
    torch.relu_(data.mul_(2.0).sub_(0.1))
    return data


def _grads_after_in_place(m, x, packed):
    xi = x.clone().requires_grad_()
    inp = pack_padded_sequence(xi, [5, 3, 2]) if packed else xi
    data = _in_place_on_output(m(inp)[0])
    (data * torch.linspace(-1, 1, data.shape[-1], dtype=data.dtype)).sum().backward()
    return [data.detach(), xi.grad, *(w.grad for w in m.parameters())]


@pytest.mark.parametrize("family", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("dtype, impl", [(torch.float32, "auto"), (torch.float64, "fused")])
def test_in_place_op_on_output_as_torch_nn(family, packed, num_layers, dtype, impl):
    if family == "LSTM" and not packed and dtype == torch.float32:
        pytest.skip("torch.nn.LSTM itself fails here (its oneDNN kernel saves the output)")
    torch.manual_seed(0)
    ours = getattr(rnnkit, family)(3, 4, num_layers, impl=impl, dtype=dtype)
    torch.manual_seed(0)
    theirs = getattr(nn, family)(3, 4, num_layers, dtype=dtype)
    x = torch.randn(5, 3, 3, dtype=dtype)
    got, want = _grads_after_in_place(ours, x, packed), _grads_after_in_place(theirs, x, packed)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)


MORE = [
    (rnnkit.LSTM, {"peephole": True}),
    (rnnkit.LSTM, {"zoneout": 0.3}),
    (rnnkit.RNN, {"zoneout": 0.3}),
    (rnnkit.LSTM, {"peephole": True, "proj_size": 2}),
]


@pytest.mark.parametrize(
    "cls, kw",
    OPTIONS + MORE,
    ids=OPTION_IDS + ["LSTM-peephole", "LSTM-zoneout", "RNN-zoneout", "LSTM-peephole-proj"],
)
@pytest.mark.parametrize("packed", [False, True])
def test_in_place_op_on_output_with_options_equals_loop(cls, kw, packed):
    torch.manual_seed(0)
    fused = cls(3, 4, impl="fused", dtype=torch.float64, **kw).eval()  # eval: zoneout without masks
    loop = cls(3, 4, impl="loop", dtype=torch.float64, **kw).eval()
    loop.load_state_dict(fused.state_dict())
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    got, want = _grads_after_in_place(fused, x, packed), _grads_after_in_place(loop, x, packed)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "family, kw",
    [
        ("RNN", {}),
        ("GRU", {"num_layers": 2, "bidirectional": True}),
        ("LSTM", {"proj_size": 2, "batch_first": True}),
    ],
)
def test_meta_device_forward_shapes_as_torch_nn(family, kw):
    # shape inference on "meta" tensors (autocast knows no such device: torch's query raises)
    x = torch.randn(5, 2, 3, device="meta")
    out, hx = getattr(rnnkit, family)(3, 4, device="meta", **kw)(x)
    want_out, want_hx = getattr(nn, family)(3, 4, device="meta", **kw)(x)
    assert out.device.type == "meta" and out.shape == want_out.shape
    for a, b in zip(
        hx if isinstance(hx, tuple) else (hx,), want_hx if isinstance(want_hx, tuple) else (want_hx,)
    ):
        assert a.device.type == "meta" and a.shape == b.shape


@pytest.mark.parametrize("kw", [{"norm": "layer"}, {"peephole": True, "impl": "fused"}, {"zoneout": 0.2}])
def test_meta_device_forward_with_options(kw):
    out, (hn, cn) = rnnkit.LSTM(3, 4, device="meta", **kw)(torch.randn(5, 2, 3, device="meta"))
    assert out.shape == (5, 2, 4) and hn.shape == cn.shape == (1, 2, 4) and out.device.type == "meta"


@pytest.mark.parametrize("family", ["RNN", "GRU"])
def test_proj_size_rejected_as_torch_nn(family):
    with pytest.raises(ValueError) as want:
        getattr(nn, family)(3, 4, proj_size=2)
    with pytest.raises(ValueError) as got:
        getattr(rnnkit, family)(3, 4, proj_size=2)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize(
    "build, name, key, hint",
    [
        (lambda: rnnkit.LSTM(3, 4, peepole=True), "rnnkit.LSTM", "peepole", "peephole"),
        (lambda: rnnkit.GRU(3, 4, reset_afer=False), "rnnkit.GRU", "reset_afer", "reset_after"),
        (lambda: rnnkit.LSTMCell(3, 4, impl="loop"), "rnnkit.LSTMCell", "impl", "not of the cells"),
        (
            lambda: rnnkit.GRUCell(3, 4, locked_dropout=0.1),
            "rnnkit.GRUCell",
            "locked_dropout",
            "not of the cells",
        ),
        (lambda: rnnkit.RNNCell(3, 4, proj_size=2), "rnnkit.RNNCell", "proj_size", "norm"),
    ],
)
def test_unknown_keyword_names_the_public_class(build, name, key, hint):
    # not the internal cell class (LSTMCellMath) the user never wrote; the valid options listed
    with pytest.raises(
        TypeError, match=rf"^{name}\.__init__\(\) got an unexpected keyword argument '{key}'"
    ) as e:
        build()
    assert hint in str(e.value) and "CellMath" not in str(e.value)


def test_lstm_cell_rejects_proj_size_as_torch_nn():
    with pytest.raises(TypeError, match="unexpected keyword argument 'proj_size'"):
        nn.LSTMCell(3, 4, proj_size=2)
    with pytest.raises(
        TypeError, match=r"^rnnkit\.LSTMCell\.__init__\(\) got an unexpected keyword argument 'proj_size'"
    ):
        rnnkit.LSTMCell(3, 4, proj_size=2)


def test_step_cell_with_projection_equals_the_layer():
    # a StepCell around a projected LSTM cell runs the cell's own step (torch's lstm_cell has no
    # projection): one step equals the layer (whose parameters carry the _l0 suffix)
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 4, proj_size=2, dtype=torch.float64)
    cell = rnnkit.StepCell(rnnkit.cells.LSTMCellMath(3, 4, True, 2), dtype=torch.float64)
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    x, h0, c0 = (torch.randn(2, n, dtype=torch.float64) for n in (3, 2, 4))
    h1, c1 = cell(x, (h0, c0))
    _, (hn, cn) = layer(x.unsqueeze(0), (h0.unsqueeze(0), c0.unsqueeze(0)))
    torch.testing.assert_close((h1, c1), (hn[0], cn[0]), rtol=1e-12, atol=1e-12)
    assert "proj_size=2" in repr(cell)


@pytest.mark.parametrize("family", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_without_bias_hold_none_biases_as_torch_nn(family):
    theirs, ours = getattr(nn, family)(3, 4, bias=False), getattr(rnnkit, family)(3, 4, bias=False)
    assert theirs.bias_ih is None and theirs.bias_hh is None
    assert ours.bias_ih is None and ours.bias_hh is None
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("kw", [{}, {"nonlinearity": "relu"}, {"bias": False, "nonlinearity": "relu"}])
def test_rnn_cell_repr_as_torch_nn(kw):
    assert repr(rnnkit.RNNCell(3, 4, **kw)) == repr(nn.RNNCell(3, 4, **kw))
    # a StepCell of the same cell says it too (it read an attribute only RNNCell had: "StepCell(3, 4)")
    step = rnnkit.StepCell(rnnkit.cells.RNNCellMath(3, 4, **kw))
    assert repr(step).replace("StepCell", "RNNCell") == repr(nn.RNNCell(3, 4, **kw))


@pytest.mark.parametrize("kw", [{}, {"norm": "layer"}])
def test_rnn_cell_nonlinearity_assigned_later_takes_effect_as_torch_nn(kw):
    # torch.nn.RNNCell reads nonlinearity at every call; rnnkit's kept a copy that the math ignored
    torch.manual_seed(0)
    theirs, ours = nn.RNNCell(3, 4), rnnkit.RNNCell(3, 4, **kw)
    ours.load_state_dict(theirs.state_dict(), strict=not kw)
    x = torch.randn(5, 3)
    for value in ("relu", "tanh", "relu"):
        theirs.nonlinearity = ours.nonlinearity = value
        assert ours.nonlinearity == value and repr(ours).startswith(repr(theirs)[:-1])
        if kw:  # (layer norm: no torch.nn twin) relu's outputs are >= 0, tanh's here are not
            assert bool((ours(x) >= 0).all()) == (value == "relu")
        else:
            torch.testing.assert_close(ours(x), theirs(x))
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        ours.nonlinearity = "sigmoid"
    assert ours.nonlinearity == "relu"


REGULARIZERS = [{"recurrent_dropout": 0.5}, {"locked_dropout": 0.5}, {"weight_drop": 0.5}, {"zoneout": 0.5}]


@pytest.mark.parametrize("reg", REGULARIZERS, ids=lambda r: next(iter(r)))
@pytest.mark.parametrize("family", ["GRU", "LSTM"])
def test_vmap_randomness_different_draws_masks_per_sample(reg, family):
    torch.manual_seed(0)
    m = getattr(rnnkit, family)(3, 4, 2, **reg).train()
    x = torch.randn(5, 2, 3).expand(6, 5, 2, 3)  # the same sequence batch for every sample

    def out(randomness):
        return torch.func.vmap(lambda xx: m(xx)[0], randomness=randomness)(x)

    different, same = out("different"), out("same")
    assert different.shape == same.shape == (6, 5, 2, 4)
    assert all(torch.equal(same[0], s) for s in same[1:])  # one mask for all samples
    assert not any(torch.equal(different[0], d) for d in different[1:])  # one mask per sample
    m.eval()  # no masks: every sample is the eager call
    torch.testing.assert_close(out("different"), m(x[0])[0].expand(6, 5, 2, 4))


def test_vmap_grad_per_sample_gradients_with_randomness_different():
    torch.manual_seed(0)
    m = rnnkit.LSTM(3, 4, recurrent_dropout=0.3, zoneout=0.2).train()
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, xx):
        return torch.func.functional_call(m, p, (xx.unsqueeze(1),))[0].pow(2).sum()

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="different")(
        params, torch.randn(3, 5, 3)
    )
    assert all(g.shape == (3, *params[k].shape) and torch.isfinite(g).all() for k, g in grads.items())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.* is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "cls, kw",
    [
        (rnnkit.LSTM, {"peephole": True}),
        (rnnkit.GRU, {"norm": "layer", "num_layers": 2}),
        (rnnkit.LSTM, {"coupled_gates": True, "bidirectional": True}),
        (rnnkit.RNN, {"zoneout": 0.2}),
    ],
    ids=["peephole", "gru-norm", "cifg-bidir", "rnn-zoneout"],
)
def test_jit_trace_of_options_records_the_loop(cls, kw):
    # the fused ops would hold the traced batch sizes as constants (garbage, out-of-bounds memory
    # at another shape); the reference loop's trace is right at the traced length and raises at
    # another one
    torch.manual_seed(0)
    m = cls(3, 4, **kw).eval()
    x = torch.randn(5, 2, 3)
    traced = torch.jit.trace(m, (x,))
    assert not any(n.kind().startswith("rnnkit") for n in traced.inlined_graph.nodes())
    torch.testing.assert_close(traced(x)[0], m(x)[0])
    for length in (3, 8):
        with pytest.raises(RuntimeError):
            traced(torch.randn(length, 2, 3))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.* is deprecated:DeprecationWarning")
@pytest.mark.parametrize("kw", [{"norm": "layer"}, {"zoneout": 0.2}], ids=["rnn-norm", "rnn-zoneout"])
def test_jit_trace_of_the_loop_raises_at_a_length_dividing_the_traced_one(kw):
    # traced at T=4 with 4 units, an input of length 1 has as many projected entries as the
    # traced length: viewed as (4, B, -1) its steps were 1 unit wide and broadcast against the
    # recurrent term, so the trace returned a (1, B, 16) output without an error
    torch.manual_seed(0)
    m = rnnkit.RNN(3, 4, **kw).eval()
    traced = torch.jit.trace(m, (torch.randn(4, 2, 3),))
    with pytest.raises(RuntimeError):
        traced(torch.randn(1, 2, 3))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.* is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "cls, kw", [(rnnkit.GRU, {}), (rnnkit.LSTM, {"norm": "layer"})], ids=["gru", "ln-lstm"]
)
def test_jit_trace_of_forced_fused_as_auto(cls, kw):
    # impl="fused" recorded the fused ops: the trace's own check failed ("Graphs differed across
    # invocations") and with check_trace=False the TorchScript failed at another length. It is
    # traced as impl="auto" is: torch's op for a standard layer (any length), else the loop
    torch.manual_seed(0)
    m = cls(3, 4, impl="fused", **kw).eval()
    x = torch.randn(5, 2, 3)
    traced = torch.jit.trace(m, (x,))
    kinds = {n.kind() for n in traced.inlined_graph.nodes()}
    assert not any(k.startswith("rnnkit") for k in kinds), kinds
    torch.testing.assert_close(traced(x)[0], m(x)[0])
    x = torch.randn(8, 2, 3)
    if kw:
        with pytest.raises(RuntimeError):  # the loop, unrolled over the traced length
            traced(x)
    else:
        assert "aten::gru" in kinds
        torch.testing.assert_close(traced(x)[0], m(x)[0])


def test_numpy_integer_num_layers_and_float_sizes_as_torch_nn():
    torch.manual_seed(0)
    ours = rnnkit.LSTM(3, 4, num_layers=np.int64(2))
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 4, num_layers=np.int64(2))
    assert ours.num_layers == 2 and type(ours.num_layers) is int
    for (k, a), (n, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert k == n and torch.equal(a, b)
    for cls in (nn.LSTM, rnnkit.LSTM):
        with pytest.raises(TypeError, match="hidden_size should be of type int, got: float"):
            cls(3, 4.0)


@pytest.mark.parametrize("family", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cells_of_hidden_size_zero_as_torch_nn(family):
    x = torch.randn(2, 3)
    ours, theirs = getattr(rnnkit, family)(3, 0)(x), getattr(nn, family)(3, 0)(x)
    for a, b in zip(
        ours if isinstance(ours, tuple) else (ours,), theirs if isinstance(theirs, tuple) else (theirs,)
    ):
        assert a.shape == b.shape == (2, 0)


@pytest.mark.parametrize("family, kw", [("LSTM", {"num_layers": 2}), ("GRU", {"batch_first": True})])
def test_lengths_on_an_empty_batch_as_without_lengths(family, kw):
    # torch.nn returns empty outputs for a batch of no sequence; lengths= (empty) gives the same
    m = getattr(rnnkit, family)(3, 4, **kw)
    x = torch.randn(0, 5, 3) if kw.get("batch_first") else torch.randn(5, 0, 3)
    want, got = m(x), m(x, lengths=torch.zeros(0, dtype=torch.long))
    # an empty list too, which torch.as_tensor reads as float32 (it was refused as not integers)
    assert m(x, lengths=[])[0].shape == want[0].shape
    assert got[0].shape == want[0].shape == getattr(nn, family)(3, 4, **kw)(x)[0].shape
    for a, b in zip(
        got[1] if isinstance(got[1], tuple) else (got[1],),
        want[1] if isinstance(want[1], tuple) else (want[1],),
    ):
        assert a.shape == b.shape


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("family", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_jit_script_is_refused_naming_the_module_and_the_ways_out(family):
    # torch.nn's layers and cells script; rnnkit's cannot, and TorchScript's own error named neither
    # the module nor a way out ("Only a single generator is currently supported")
    model = nn.Sequential(nn.Identity(), getattr(rnnkit, family)(3, 4))  # also inside a model
    want = rf"cannot compile rnnkit\.{family} .*torch\.jit\.trace.*torch\.nn\.{family}"
    with pytest.raises(RuntimeError, match=want):
        torch.jit.script(model)
    torch.jit.script(getattr(nn, family)(3, 4))  # (what the message points to works)
