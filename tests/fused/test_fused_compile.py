"""The fused direction as custom operators: ``torch.library.opcheck`` and ``torch.compile``.

``rnnkit::fused_direction`` (forward, saved tensors as extra outputs) and
``rnnkit::fused_direction_backward`` must pass opcheck (schema, fake tensors, autograd
registration, AOT dispatch); a small rnnkit model compiles with ``fullgraph=True`` (no graph
break; torch.nn's RNNs break there) and gives the eager reference loop's numbers.
"""

from __future__ import annotations

import types

import pytest
import torch

import rnnkit
from rnnkit.kernels import lstm_variants, norm, norm_ops, ops, variants

from .conftest import LSTMHead, assert_same_outputs_and_gradients

BS = [3, 2, 1, 1]  # packed batch sizes: N = 7 rows, B = 3


def _t(*shape, grad=True):
    return torch.randn(*shape, requires_grad=grad)


def _case(name):
    N, B, H = sum(BS), BS[0], 4
    if name == "lstm":
        return ("lstm", _t(N, 4 * H), _t(B, H), _t(B, H), _t(4 * H, H), None, None, None, None, None, None)
    if name == "lstm_proj_peephole_zoneout_mask":
        m, zh, zc = torch.rand(B, 2), torch.rand(N, 2), torch.rand(N, H)
        return ("lstm", _t(N, 4 * H), _t(B, 2), _t(B, H), _t(4 * H, 2), None, _t(2, H), m, zh, zc, _t(3 * H))
    if name == "gru":
        return ("gru", _t(N, 3 * H), _t(B, H), None, _t(3 * H, H), _t(3 * H), None, None, None, None, None)
    if name == "gru_mask_zoneout":
        m, zh = torch.rand(B, H), torch.rand(N, H)
        return ("gru", _t(N, 3 * H), _t(B, H), None, _t(3 * H, H), None, None, m, zh, None, None)
    if name == "rnn_tanh_zoneout":
        return (
            "rnn_tanh",
            _t(N, H),
            _t(B, H),
            None,
            _t(H, H),
            None,
            None,
            None,
            torch.rand(N, H),
            None,
            None,
        )
    return ("rnn_relu", _t(N, H), _t(B, H), None, _t(H, H), None, None, torch.rand(B, H), None, None, None)


NAMES = ["lstm", "lstm_proj_peephole_zoneout_mask", "gru", "gru_mask_zoneout", "rnn_tanh_zoneout", "rnn_relu"]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_opcheck_forward(name, reverse):
    torch.manual_seed(0)
    torch.library.opcheck(ops.fused_direction, (*_case(name), BS, reverse))


@pytest.mark.parametrize("name", ["lstm_proj_peephole_zoneout_mask", "gru", "rnn_tanh_zoneout"])
def test_opcheck_backward(name):
    torch.manual_seed(0)
    args = _case(name)
    kind, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, w_peep = args
    res = ops.fused_direction(*args, BS, True)
    out, saved = res[0].detach(), [s.detach() for s in res[3:]]
    g = (torch.randn_like(out), torch.randn(h0.shape), None if c0 is None else torch.randn(c0.shape))
    d = [None if t is None else t.detach() for t in (w_hh, w_hr, w_peep)]
    bw = (kind, *g, out, saved, d[0], b_hh is not None, d[1], mask, zh, zc, d[2], BS, True)
    torch.library.opcheck(ops.fused_direction_backward, bw)


def test_custom_op_gradients_match_the_loop():
    torch.manual_seed(0)
    args = _case("lstm_proj_peephole_zoneout_mask")
    leaves = [a for a in args[1:] if isinstance(a, torch.Tensor) and a.requires_grad]
    assert torch.autograd.gradcheck(lambda *_: ops.fused_direction(*args, BS, False)[:3], leaves)


@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)  # inside torch
def test_compile_fullgraph_matches_eager_loop(monkeypatch):
    """A small bidirectional 2-layer LSTM model under torch.compile(fullgraph=True): the
    compiled graph runs the custom op (4 directions) and matches the reference loop."""
    calls = []
    orig = ops.forward_impl
    monkeypatch.setattr(ops, "forward_impl", lambda *a: calls.append(a[0]) or orig(*a))

    compiled, ref = LSTMHead("auto", 5), LSTMHead("loop", 5)
    x = torch.randn(6, 4, 3)
    torch._dynamo.reset()
    y = torch.compile(compiled, fullgraph=True)(x)
    assert calls == ["lstm"] * 4
    assert_same_outputs_and_gradients(compiled, y, ref, ref(x))


EXPORTED = [
    (rnnkit.GRU, {"num_layers": 2, "bidirectional": True}, "fused_direction", 4),
    (rnnkit.LSTM, {"proj_size": 2, "peephole": True}, "fused_direction", 1),
    (rnnkit.RNN, {"nonlinearity": "relu", "bidirectional": True}, "fused_direction", 2),
    (rnnkit.LSTM, {"norm": "layer", "peephole": True, "bidirectional": True}, "fused_norm_direction", 2),
    (rnnkit.LSTM, {"norm": "batch", "max_len": 6}, "fused_norm_direction", 1),
    (rnnkit.LSTM, {"full_gate_recurrence": True, "coupled_gates": True}, "fused_variant_direction", 1),
    (rnnkit.GRU, {"variant": "mut2"}, "fused_variant_direction", 1),
]


@pytest.mark.parametrize("cls,kw,op,count", EXPORTED)
def test_export_graph_holds_the_custom_op(cls, kw, op, count):
    """torch.export of a model (evaluation): one ``rnnkit.<op>`` node per layer-direction, and
    the exported program gives the reference loop's numbers."""

    class Model(torch.nn.Module):
        def __init__(self, impl):
            super().__init__()
            torch.manual_seed(0)
            self.rnn = cls(3, 5, impl=impl, **kw)

        def forward(self, x):
            out, h = self.rnn(x)
            return out.sum(0) + sum(t.sum() for t in (h if isinstance(h, tuple) else (h,)))

    x = torch.randn(6, 4, 3)
    ep = torch.export.export(Model("auto").eval(), (x,))
    nodes = [n for n in ep.graph.nodes if f"rnnkit.{op}." in str(n.target)]
    assert len(nodes) == count
    torch.testing.assert_close(ep.module()(x), Model("loop").eval()(x), atol=1e-10, rtol=1e-10)


def _fixed_mask(kind, shape, p, like):
    """A deterministic stand-in for ``regularizers.sample_mask`` (same values eager and traced):
    under torch.compile masks come from ``torch.rand``, not the eager CPU generator."""
    n = 1
    for s in shape:
        n *= s
    u = (torch.arange(n, device=like.device) * 40503 % 997).to(like.dtype).view(tuple(shape)) / 997
    if kind == "zoneout":
        return (u < p).to(like.dtype)
    return (u >= p).to(like.dtype) / (1 - p)


REGULARIZED = [
    (rnnkit.LSTM, {"norm": "layer", "peephole": True, "num_layers": 2, "bidirectional": True,
                   "zoneout": (0.2, 0.1), "recurrent_dropout": 0.2, "weight_drop": 0.3,
                   "locked_dropout": 0.2}),
    (rnnkit.LSTM, {"full_gate_recurrence": True, "zoneout": 0.2, "recurrent_dropout": 0.3}),
    (rnnkit.GRU, {"variant": "mut1", "zoneout": 0.2, "recurrent_dropout": 0.2, "weight_drop": 0.2}),
    (rnnkit.RNN, {"norm": "layer", "zoneout": 0.3, "num_layers": 2, "locked_dropout": 0.3}),
    (rnnkit.LSTM, {"proj_size": 2, "peephole": True, "bidirectional": True, "zoneout": 0.2,
                   "weight_drop": 0.3}),
    (rnnkit.GRU, {"norm": "layer", "bidirectional": True, "zoneout": 0.2, "recurrent_dropout": 0.2}),
]  # fmt: skip


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("cls,kw", REGULARIZED)
def test_compile_regularized_training_matches_eager(monkeypatch, cls, kw):
    """Training with every regularizer under torch.compile(fullgraph=True): with the same masks
    (``sample_mask`` replaced) the compiled layer's outputs and gradients are the eager
    reference loop's."""
    from rnnkit import regularizers

    monkeypatch.setattr(regularizers, "sample_mask", _fixed_mask)
    torch.manual_seed(0)
    m = cls(3, 4, **kw).train()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.5, 0.5)
    ref = cls(3, 4, impl="loop", **kw).train()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    torch._dynamo.reset()
    y = torch.compile(m, fullgraph=True)(x)[0]
    y_ref = ref(x)[0]
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    ga = torch.autograd.grad(y.sum(), [x, *m.parameters()])
    gb = torch.autograd.grad(y_ref.sum(), [x, *ref.parameters()])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("packed", [False, True])
def test_compile_fullgraph_and_export_name_lengths_and_packed_input(packed):
    """Packed input and ``lengths=`` cannot be traced whole (the batch sizes are a tensor's
    values): fullgraph=True and torch.export say so, instead of torch's 'Could not guard on
    data-dependent expression u0 < 1'."""
    torch.manual_seed(0)
    m, args = _gru_and_variable_length_args(packed)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="packed input and lengths= are not supported under torch.compile"):
        torch.compile(m, fullgraph=True, backend="eager")(*args)
    with pytest.raises(Exception, match="packed input and lengths= are not supported under torch.compile"):
        torch.export.export(m, args)


@pytest.mark.parametrize("packed", [False, True])
def test_compile_fullgraph_names_lengths_on_a_torch_without_is_exporting(monkeypatch, packed):
    """torch.compiler.is_exporting came with torch 2.6 (rnnkit supports 2.4): the check for
    torch.export called it unguarded, so there fullgraph=True failed on the missing attribute,
    not with the message naming packed input and lengths=."""
    from rnnkit import _checks

    class Torch25:  # torch as the checks see it (torch.compile itself uses is_exporting here)
        compiler = types.SimpleNamespace(is_compiling=torch.compiler.is_compiling)

        def __getattr__(self, name):
            return getattr(torch, name)

    monkeypatch.setattr(_checks, "torch", Torch25())
    m, args = _gru_and_variable_length_args(packed)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="packed input and lengths= are not supported under torch.compile"):
        torch.compile(m, fullgraph=True, backend="eager")(*args)


def _gru_and_variable_length_args(packed: bool):
    """A GRU and its call arguments for two sequences of lengths 4 and 2: packed, or lengths=."""
    from torch.nn.utils.rnn import pack_padded_sequence

    x, lengths = torch.randn(4, 2, 3), torch.tensor([4, 2])
    return rnnkit.GRU(3, 4).eval(), ((pack_padded_sequence(x, lengths),) if packed else (x, None, lengths))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("cls,kw", REGULARIZED[:2])
def test_compile_evaluation_zoneout_matches_eager(cls, kw):
    """Zoneout in evaluation (its expectation ``p``, one row broadcast over all rows of the
    kernels' weights) under torch.compile(fullgraph=True): the eager reference loop's numbers."""
    torch.manual_seed(0)
    m = cls(3, 4, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.5, 0.5)
    ref = cls(3, 4, impl="loop", **kw).eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 3, requires_grad=True)
    torch._dynamo.reset()
    y, y_ref = torch.compile(m, fullgraph=True)(x)[0], ref(x)[0]
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    ga = torch.autograd.grad(y.sum(), [x, *m.parameters()])
    gb = torch.autograd.grad(y_ref.sum(), [x, *ref.parameters()])
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind, G", [("lstm", 4), ("rnn_tanh", 1), ("rnn_relu", 1)])
def test_pure_custom_op_refuses_a_b_hh_it_would_ignore(monkeypatch, kind, G):
    """The pure-PyTorch path of ``rnnkit::fused_direction`` read no ``b_hh`` for the LSTM and RNN
    kinds (the caller folds it into ``xp``): one passed was dropped, the outputs lacking the
    bias, where the C++ op refuses it."""
    monkeypatch.setattr(ops, "use_ext_for", lambda x: False)
    H, N, B = 2, sum(BS), BS[0]
    c0 = torch.randn(B, H) if kind == "lstm" else None
    args = [torch.randn(N, G * H), torch.randn(B, H), c0, torch.randn(G * H, H), torch.randn(G * H)]
    args += [None] * 5
    msg = r"b_hh must be None for the (LSTM|RNN) \(add it to xp\), got a tensor of shape \[\d+\]"
    with pytest.raises(ValueError, match=msg):
        torch.ops.rnnkit.fused_direction(kind, *args, BS, False)
    args[4] = None
    torch.ops.rnnkit.fused_direction(kind, *args, BS, False)  # without it: runs


def test_pure_variant_and_norm_ops_refuse_a_b_hh_they_would_ignore(monkeypatch):
    """As ``rnnkit::fused_direction``'s: the pure-PyTorch paths (CUDA, RNNKIT_NO_EXT) of
    ``rnnkit::fused_variant_direction`` (LSTM layouts) and ``rnnkit::fused_norm_direction`` (LSTM,
    RNN) read no ``b_hh`` (the caller folds it into ``xp``): one passed was dropped, the outputs
    lacking the bias, where the C++ ops refuse it."""
    monkeypatch.setattr(variants, "use_ext_for", lambda x: False)
    monkeypatch.setattr(norm_ops, "use_ext_for", lambda x: False)
    H, N, B, r = 2, sum(BS), BS[0], torch.randn
    flags = lstm_variants.HAS_I | lstm_variants.HAS_F | lstm_variants.HAS_O
    flags |= lstm_variants.IN_ACT | lstm_variants.OUT_ACT
    v = [r(N, 4 * H), r(B, H), r(B, H), r(4 * H, H), r(4 * H), *[None] * 8]
    msg = r"^rnnkit::fused_variant_direction: b_hh must be None for the LSTM layouts \(the caller adds it"
    with pytest.raises(ValueError, match=msg + r" to xp\), got a tensor of shape \[8\]$"):
        torch.ops.rnnkit.fused_variant_direction("lstm_v", flags, *v, BS, False)
    v[4] = None
    torch.ops.rnnkit.fused_variant_direction("lstm_v", flags, *v, BS, False)  # without it: runs
    for kind, G in (("lstm", 4), ("rnn_tanh", 1)):
        c0, g_c, s_c = (r(B, H), 1 + r(H), r(H)) if kind == "lstm" else (None, None, None)
        a = [r(N, G * H), r(B, H), c0, r(G * H, H), r(G * H), *[None] * 4]
        a += [1 + r(G * H), r(G * H), g_c, s_c, None, None, None]
        msg = rf"^rnnkit::fused_norm_direction: b_hh must be None for the {kind} \(the caller adds it to xp\)"
        with pytest.raises(ValueError, match=msg):
            torch.ops.rnnkit.fused_norm_direction(kind, norm.LN, *a, BS, False)
        a[4] = None
        torch.ops.rnnkit.fused_norm_direction(kind, norm.LN, *a, BS, False)
