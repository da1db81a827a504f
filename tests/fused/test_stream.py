"""Streaming: stepping a layer one time step at a time reproduces its sequence output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnkit
from rnnkit.kernels.stream import Stream

from .test_fused_property import CELL_OPTIONS, CLASSES

CASES = [
    (rnnkit.LSTM, {}),
    (rnnkit.LSTM, {"proj_size": 2}),
    (rnnkit.GRU, {}),
    (rnnkit.RNN, {"nonlinearity": "relu"}),
    (rnnkit.LSTM, {"norm": "layer"}),  # a zoo cell: its own step()
    (rnnkit.GRU, {"zoneout": 0.3, "recurrent_dropout": 0.2}),  # evaluation semantics
]


@pytest.mark.parametrize("cls,kw", CASES)
def test_steps_equal_sequence_output(cls, kw):
    torch.manual_seed(0)
    layer = cls(3, 4, 2, **kw).eval()
    x = torch.randn(5, 2, 3)
    out, final = layer(x)
    stream, state, ys = Stream(layer), None, []
    for t in range(5):
        y, state = stream.step(x[t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys), out, atol=1e-12, rtol=1e-12)
    for u, v in zip(
        state if isinstance(state, tuple) else (state,), final if isinstance(final, tuple) else (final,)
    ):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)


def test_unbatched_and_errors():
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 4).eval()
    x = torch.randn(3, 3)
    out, _ = layer(x)
    stream, state = Stream(layer), None
    for t in range(3):
        y, state = stream.step(x[t], state)
    torch.testing.assert_close(y, out[-1], atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="unidirectional"):
        Stream(rnnkit.GRU(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        stream.step(torch.randn(2, 5))
    with pytest.raises(ValueError, match="eval"):
        Stream(rnnkit.GRU(3, 4, zoneout=0.1).train()).step(torch.randn(3))


@pytest.mark.parametrize(
    "kw, why",
    [({"norm": "batch", "max_len": 3}, "batch norm"), ({"dropout": 0.5}, "dropout between layers")],
    ids=["batch_norm", "dropout"],
)
def test_training_mode_that_differs_from_evaluation_is_refused(kw, why):
    """Stream is documented to run evaluation semantics, but in training mode a batch-norm
    layer normalized with the step's batch statistics and updated the running ones, and
    dropout between layers was applied. Now refused like the regularizers, nothing changed;
    after eval() the stream gives the layer's eval() outputs."""
    torch.manual_seed(0)
    layer = _scrambled(rnnkit.LSTM(3, 4, 2, **kw)).train()
    buffers = {k: b.clone() for k, b in layer.named_buffers()}
    x = torch.randn(3, 2, 3)
    with pytest.raises(ValueError, match=rf"call layer\.eval\(\).*{why}"):
        Stream(layer).step(x[0])
    assert all(torch.equal(b, buffers[k]) for k, b in layer.named_buffers())
    layer.eval()
    _close(_run(Stream(layer), x)[0], layer(x)[0])
    plain = rnnkit.LSTM(3, 4, 2).train()  # nothing differs in training: streams as in eval()
    _close(_run(Stream(plain), x)[0], plain(x)[0])


def test_other_layers_get_a_type_error_naming_what_to_use():
    """QRNN & co. (no cells) and torch's layers used to fail with an AttributeError on ``cells``."""
    with pytest.raises(TypeError, match=r"rnnkit\.LSTM.*got .*qrnn\.QRNN: .*QRNN\.step\(x_t, state\)"):
        Stream(rnnkit.QRNN(3, 4))
    with pytest.raises(TypeError, match=r"got torch\.nn\.modules\.rnn\.LSTM: build it as rnnkit\.LSTM"):
        Stream(torch.nn.LSTM(3, 4))


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_wrapped_layers_get_a_type_error_naming_the_attribute_to_pass():
    """cuda_graphed and torch.compile wrap an rnnkit.LSTM; the error used to say to build one."""
    with pytest.raises(TypeError, match=r"CUDAGraphed: it wraps a LSTM: pass its \.layer "):
        Stream(rnnkit.cuda_graphed(rnnkit.LSTM(3, 4)))
    with pytest.raises(TypeError, match=r"OptimizedModule: it wraps a LSTM: pass its \._orig_mod "):
        Stream(torch.compile(rnnkit.LSTM(3, 4)))
    layer = rnnkit.LSTM(3, 4)
    assert Stream(torch.compile(layer)._orig_mod).layer is layer


def _scrambled(layer):
    """Parameters and batch norm's running statistics away from their initial values (slot by
    slot: a stream that read the wrong slot would show)."""
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-0.6, 0.6)
        for name, b in layer.named_buffers():
            b.copy_(torch.rand_like(b) + 0.5 if "var" in name else torch.randn_like(b))
    return layer


def _run(stream, x, **kw):
    state, ys = None, []
    for t in range(x.shape[0]):
        y, state = stream.step(x[t], state, **kw)
        ys.append(y)
    return torch.stack(ys), state


def _close(got, want):
    for u, v in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)


@settings(max_examples=80, deadline=None)
@given(
    family=st.sampled_from(sorted(CELL_OPTIONS)),
    pick=st.integers(0, 100),
    L=st.integers(1, 2),
    proj=st.booleans(),
    zoneout=st.sampled_from([0.0, 0.3]),
    T=st.integers(1, 6),
    B=st.integers(1, 3),
)
def test_steps_equal_sequence_output_property(family, pick, L, proj, zoneout, T, B):
    """Any cell option (batch norm's per-step slots included), stacked, with evaluation zoneout."""
    opts = dict(CELL_OPTIONS[family][pick % len(CELL_OPTIONS[family])])
    if family == "lstm" and proj:
        opts["proj_size"] = 2
    torch.manual_seed(pick)
    layer = _scrambled(CLASSES[family](3, 4, L, zoneout=zoneout, **opts)).eval()
    x = torch.randn(T, B, 3)
    out, final = layer(x)
    ys, state = _run(Stream(layer), x)
    _close(ys, out)
    _close(state, final)


def test_batch_norm_stream_counts_its_steps_and_takes_an_explicit_one():
    torch.manual_seed(0)
    layer = _scrambled(rnnkit.LSTM(3, 4, norm="batch", max_len=3)).eval()
    x, z = torch.randn(5, 2, 3), torch.randn(4, 2, 3)
    want_x, want_z = layer(x)[0], layer(z)[0]
    stream = Stream(layer)
    _close(_run(stream, x)[0], want_x)
    _close(_run(stream, z)[0], want_z)  # state=None: a new sequence restarts the count
    # two sequences interleaved through one stream: explicit time indices
    sx = sz = None
    for t in range(4):
        yx, sx = stream.step(x[t], sx, step=t)
        yz, sz = stream.step(z[t], sz, step=t)
        _close(yx, want_x[t])
        _close(yz, want_z[t])
    with pytest.raises(ValueError, match="non-negative int"):
        stream.step(x[0], step=-1)
    # what the layer's step takes: a numpy int, a 0-d integer tensor (these were refused)
    s2 = _run(stream, x[:2])[1]
    for step in (np.int64(2), torch.tensor(2)):
        _close(stream.step(x[2], s2, step=step)[0], want_x[2])


@pytest.mark.parametrize(
    "opts", [{}, {"norm": "layer"}, {"norm": "batch"}, {"peephole": True}], ids=lambda o: str(o) or "std"
)
def test_bad_states_are_clear_errors(opts):
    """The state was not checked: a state of batch 1 for an input of batch 3 was silently
    broadcast (layer / batch norm), other mistakes failed inside the step (IndexError, KeyError,
    shape mismatches) -- now errors naming the expected and received shapes, as the layer's."""
    stream = Stream(rnnkit.LSTM(3, 4, 2, **opts).eval())
    x, z = torch.randn(3, 3), torch.zeros

    def bad(state, match, x=x):
        with pytest.raises(ValueError, match=match):
            stream.step(x, state)

    bad((z(2, 1, 4), z(2, 1, 4)), r"expected h_0 of shape \(2, 3, 4\), got \(2, 1, 4\)")
    bad((z(1, 3, 4), z(1, 3, 4)), r"expected h_0 of shape \(2, 3, 4\), got \(1, 3, 4\)")
    bad((z(2, 3, 4), z(2, 3, 5)), r"expected c_0 of shape \(2, 3, 4\), got \(2, 3, 5\)")
    bad((z(2, 3, 4), z(2, 3, 4)), r"expected h_0 of shape \(2, 4\), got \(2, 3, 4\)", x=x[0])  # unbatched
    bad((z(2, 3, 4, dtype=torch.float32),) * 2, "h_0 has dtype torch.float32")
    bad(None, "x_t has dtype torch.float32", x=x.float())


AUTOCAST_CASES = [
    (rnnkit.LSTM, {}, "auto"),  # torch's LSTM under autocast: bfloat16 (its lstm_cell: float32)
    (rnnkit.RNN, {}, "loop"),  # the layer in float32 (autocast off); torch's rnn_tanh_cell: bfloat16
    (rnnkit.RNN, {"nonlinearity": "relu"}, "fused"),
    (rnnkit.GRU, {"reset_after": False}, "auto"),  # its step under autocast crashed in torch.lerp
    (rnnkit.LSTM, {"full_gate_recurrence": True}, "auto"),  # its gates state came back bfloat16
    (rnnkit.LSTM, {"norm": "layer", "proj_size": 2}, "auto"),
    (rnnkit.LSTM, {"norm": "batch", "max_len": 3}, "auto"),
]


@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("cls,kw,impl", AUTOCAST_CASES)
def test_steps_under_autocast_follow_the_layer(cls, kw, impl, unbatched):
    """Under autocast a stream ran torch's cell kernels or the cell's step with autocast on,
    where the layer runs torch's sequence kernels (other dtypes than their cell kernels': the
    LSTM's bfloat16) or runs in the parameters' dtype with autocast off: other dtypes than the
    layer's (RNN with impl='loop': bfloat16 where the layer gives float32), a mixed state, or a
    crash (the Cho GRU's lerp). Now a step under autocast is the layer's own call on one step:
    the layer's dtypes, its numbers to bfloat16's rounding, a float32 or bfloat16 state."""
    torch.manual_seed(0)
    layer = _scrambled(cls(3, 4, 2, impl=impl, dtype=torch.float32, **kw)).eval()
    x = torch.randn(5, 3) if unbatched else torch.randn(5, 2, 3)
    x = x.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, final = layer(x)
        ys, state = _run(Stream(layer), x)
    finals, states = (final, state) if isinstance(final, tuple) else ((final,), (state,))
    for u, v in zip((ys, *states), (out, *finals), strict=True):
        assert u.dtype == v.dtype and u.shape == v.shape
        torch.testing.assert_close(u.float(), v.float(), atol=0.05, rtol=0.05)


def test_complex_input_to_a_relu_layer_is_refused_in_words():
    """The layer refuses complex input with nonlinearity='relu' in words; a stream ran torch's
    relu cell, which failed with "clamp is not supported for complex types"."""
    layer = rnnkit.RNN(3, 4, nonlinearity="relu", dtype=torch.complex128).eval()
    with pytest.raises(TypeError, match=r"nonlinearity='relu' is not defined for complex.*complex128"):
        Stream(layer).step(torch.randn(2, 3, dtype=torch.complex128))
