"""The normalized cells' fused custom op (``rnnkit.kernels.norm_ops``): ``torch.library.opcheck``
of the forward and backward ops, gradcheck on both backends, and ``torch.compile(fullgraph=True)``
models with layer norm and with batch norm's running statistics. The layers against the
reference loop are in test_fused_norm.py.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.kernels import norm_ops

from .conftest import LSTMHead, assert_same_outputs_and_gradients

BS = [3, 2, 1, 1]  # packed batch sizes: N = 7 rows, B = 3


def _op_args(kind, mode, grad=True, peep=False):
    N, B, H, T = sum(BS), BS[0], 3, len(BS)

    def t(*shape):
        return torch.randn(*shape, requires_grad=grad)

    P = H
    G = {"lstm": 4 * H, "gru": 3 * H}.get(kind, H)
    lstm = kind == "lstm"
    st_hh = st_c = None
    if mode == 3:  # per slot (mean, 1/std); 3 slots for T = 4 steps: the last one shared
        st_hh = torch.stack([torch.randn(3, G), torch.rand(3, G) + 0.5])
        st_c = torch.stack([torch.randn(3, H), torch.rand(3, H) + 0.5]) if lstm else None
    return (
        kind, mode, t(N, G), t(B, P), t(B, H) if lstm else None, t(G, P), t(G) if kind == "gru" else None,
        None, torch.rand(B, P), torch.rand(N, P), torch.rand(N, H) if lstm else None,
        t(G), t(G) if mode == 1 else None, t(H) if lstm else None, t(H) if lstm else None, st_hh, st_c,
        t(3 * H) if peep else None,
    )  # fmt: skip
    del T


OP_CASES = [("lstm", 1), ("lstm", 2), ("lstm", 3), ("gru", 1), ("rnn_tanh", 1), ("rnn_relu", 1)]
PEEP_CASES = [("lstm", 1, True), ("lstm", 2, False), ("lstm", 3, True)]  # (kind, mode, reverse)


@pytest.mark.parametrize("kind,mode,reverse", [(k, m, i % 2 == 1) for i, (k, m) in enumerate(OP_CASES)])
def test_opcheck(kind, mode, reverse):
    torch.manual_seed(0)
    torch.library.opcheck(norm_ops.fused_norm_direction, (*_op_args(kind, mode), BS, reverse))


@pytest.mark.parametrize("kind,mode,reverse", PEEP_CASES)
def test_opcheck_peephole(kind, mode, reverse):
    torch.manual_seed(0)
    torch.library.opcheck(norm_ops.fused_norm_direction, (*_op_args(kind, mode, peep=True), BS, reverse))


@pytest.mark.parametrize(
    "kind,mode,peep",
    [("lstm", 2, False), ("lstm", 2, True), ("lstm", 3, True), ("gru", 1, False), ("rnn_relu", 3, False)],
)
def test_opcheck_backward(kind, mode, peep):
    torch.manual_seed(0)
    args = _op_args(kind, mode, grad=False, peep=peep)
    res = norm_ops.fused_norm_direction(*args, BS, True)
    out, saved = res[0], list(res[7:])
    kind, mode, xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, g_hh, s_hh, g_c, s_c, st_hh, st_c, w_peep = args
    g = (
        torch.randn_like(out),
        torch.randn(h0.shape),
        out.new_empty(0) if c0 is None else torch.randn(c0.shape),
    )
    bw = (kind, mode, *g, out, saved, w_hh, b_hh is not None, w_hr, mask, zh, zc, g_hh, s_hh is not None, g_c)
    bw += (s_c is not None, st_hh, st_c, w_peep)
    bw += (BS, True)
    torch.library.opcheck(norm_ops.fused_norm_direction_backward, bw)


@pytest.mark.parametrize(
    "kind,mode,peep", [(k, m, False) for k, m in OP_CASES] + [("lstm", 1, True), ("lstm", 2, True)]
)
def test_gradcheck(backend, kind, mode, peep):
    torch.manual_seed(0)
    args = _op_args(kind, mode, peep=peep)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    fn = lambda *_: norm_ops.fused_norm_direction(*args, BS, False)[:3]  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_layer_norm_model():
    """A 2-layer bidirectional layer-norm LSTM + head under torch.compile(fullgraph=True): one
    custom op per layer-direction, the reference loop's numbers and gradients."""

    compiled, ref = LSTMHead("auto", 4, norm="layer"), LSTMHead("loop", 4, norm="layer")
    x = torch.randn(5, 3, 3)
    torch._dynamo.reset()
    cnt = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    y = torch.compile(compiled, fullgraph=True, backend=cnt)(x)
    assert cnt.frame_count == 1
    ops = [n for g in cnt.graphs for n in g.graph.nodes if "fused_norm_direction" in str(n.target)]
    assert len(ops) == 4
    assert_same_outputs_and_gradients(compiled, y, ref, ref(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_batch_norm_updates_running_stats():
    """Batch norm under torch.compile(fullgraph=True): the buffer updates happen in the graph,
    equal to the eager loop's, in training; evaluation uses them."""
    torch.manual_seed(0)
    a = rnnkit.LSTM(3, 4, 2, norm="batch", bidirectional=True, max_len=3)
    b = rnnkit.LSTM(3, 4, 2, norm="batch", bidirectional=True, max_len=3, impl="loop")
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 3, 3)
    torch._dynamo.reset()
    f = torch.compile(lambda v: a(v)[0], fullgraph=True, backend="aot_eager")
    for training in (True, False):
        a.train(training), b.train(training)
        torch.testing.assert_close(f(x), b(x)[0], atol=1e-10, rtol=1e-10)
        for u, v in zip(a.buffers(), b.buffers()):
            torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)
    assert not torch.equal(a.running_var_c_l1, torch.ones_like(a.running_var_c_l1))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_batch_norm_training_before_the_extension_loads(monkeypatch):
    """A batch-norm LSTM compiled in training as a process's first use of the compiled kernels:
    loading them takes a lock, which dynamo cannot trace (a graph break, under fullgraph an
    error). The traced code asks which backend runs only outside torch.compile."""
    from rnnkit.kernels import ext

    loaded = ext.ops()
    monkeypatch.setattr(ext, "_state", {})  # as in a fresh process: the next ext.ops() loads
    monkeypatch.setattr(ext, "_build", lambda: loaded)
    torch.manual_seed(0)
    a = rnnkit.LSTM(3, 4, norm="batch", max_len=3)
    b = rnnkit.LSTM(3, 4, norm="batch", max_len=3, impl="loop")
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 2, 3)
    torch._dynamo.reset()
    y = torch.compile(a, fullgraph=True, backend="eager")(x)[0]
    torch.testing.assert_close(y, b(x)[0], atol=1e-10, rtol=1e-10)
    for u, v in zip(a.buffers(), b.buffers()):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)
