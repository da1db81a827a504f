"""Complex dtypes on the drop-in layers: torch.nn's GRU/LSTM/RNN(tanh) run complex64/complex128,
so rnnkit's give torch's numbers there (its kernels or the loop), and refuse in words what cannot
(the fused kernels, whose BPTT is real) or what torch.nn refuses too (ReLU: no order on C)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit

from .conftest import flat, make_pair

C = torch.complex128
CONFIGS = [
    ("GRU", {}),
    ("LSTM", {}),
    ("RNN_TANH", {}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("LSTM", {"proj_size": 2, "batch_first": True}),
    ("RNN_TANH", {"bias": False}),
]


def _loss(out):
    # a real loss of complex outputs that reaches both parts (Wirtinger gradients: torch's convention)
    return sum((t.abs() ** 2).sum() + t.real.sum() for t in flat(out))


@pytest.mark.parametrize("mode, kw", CONFIGS)
@pytest.mark.parametrize("impl", ["auto", "torch", "loop"])
@pytest.mark.parametrize("packed", [False, True])
def test_complex_layers_equal_torch_nn(mode, kw, impl, packed):
    a, b = make_pair(mode, 3, 4, impl=impl, dtype=C, **kw)
    # (torch's pack_padded_sequence has no complex derivative: the packed input takes none)
    x = torch.randn(5, 3, 3, dtype=C, requires_grad=not packed)
    lengths = [3, 3, 2, 2, 1] if kw.get("batch_first") else [5, 3, 2]
    inp = pack_padded_sequence(x, lengths, kw.get("batch_first", False)) if packed else x
    out_a, out_b = a(inp), b(inp)
    for u, v in zip(flat(out_a), flat(out_b), strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)
    wrt = ([] if packed else [x]) + list(a.parameters())
    ga = torch.autograd.grad(_loss(out_a), wrt)
    gb = torch.autograd.grad(_loss(out_b), ([] if packed else [x]) + list(b.parameters()))
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_auto_never_takes_the_fused_kernels(dtype):
    # recurrent dropout and zoneout run on the fused kernels in real dtypes: complex, on the loop
    m = rnnkit.GRU(3, 4, dtype=dtype, zoneout=0.1)
    assert rnnkit.dispatch.select(m, torch.randn(5, 2, 3, dtype=dtype)) == "loop"
    m = rnnkit.GRU(3, 4, dtype=dtype)
    assert rnnkit.dispatch.select(m, torch.randn(5, 2, 3, dtype=dtype)) == "torch"


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")  # (torch's, on .to(complex))
@pytest.mark.parametrize("family", [rnnkit.GRU, rnnkit.LSTM, rnnkit.RNN])
def test_complex_fused_is_refused_in_words(family):
    with pytest.raises(TypeError, match=r"impl='fused' has no kernel for complex dtypes.*complex64"):
        family(3, 4, dtype=torch.complex64, impl="fused")
    m = family(3, 4, dtype=torch.complex64)
    with pytest.raises(TypeError, match="complex64"):
        m.impl = "fused"
    assert m.impl == "auto"
    m = family(3, 4, impl="fused").to(torch.complex128)  # converted after construction
    with pytest.raises(rnnkit.RecurrentInputError, match="complex128"):
        m(torch.randn(5, 2, 3, dtype=torch.complex128))


@pytest.mark.parametrize(
    "build",
    [
        lambda: rnnkit.RNN(3, 4, nonlinearity="relu", dtype=C),
        lambda: rnnkit.RNNCell(3, 4, nonlinearity="relu", dtype=C),
    ],
)
def test_complex_relu_refused_in_words_as_torch_nn_refuses(build):
    x = torch.randn(2, 3, dtype=C)
    with pytest.raises(NotImplementedError):  # torch.nn: "clamp is not supported for complex types"
        torch.nn.RNN(3, 4, nonlinearity="relu", dtype=C)(x)
    with pytest.raises(TypeError, match=r"nonlinearity='relu' is not defined for complex.*complex128"):
        build()(x)


@pytest.mark.parametrize(
    "build, norm",
    [
        (lambda: rnnkit.LSTM(3, 4, norm="layer", dtype=C), "layer"),
        (lambda: rnnkit.LSTM(3, 4, norm="batch", max_len=3, dtype=C), "batch"),
        (lambda: rnnkit.GRU(3, 4, norm="layer", dtype=C), "layer"),
        (lambda: rnnkit.RNN(3, 4, norm="layer", dtype=C), "layer"),
        (lambda: rnnkit.LSTMCell(3, 4, norm="layer", dtype=C), "layer"),
    ],
)
def test_complex_norm_refused_in_words(build, norm):
    """Layer norm failed in torch's words ("LayerNormKernelImpl" not implemented for
    'ComplexDouble'), batch norm in a dtype mismatch of ``end``; neither named the option."""
    m = build()
    with pytest.raises(TypeError, match=rf"norm='{norm}' is not defined for complex.*complex128"):
        m(torch.randn(2, 3, dtype=C))
    if isinstance(m, rnnkit.RecurrentStack):
        from rnnkit.kernels.stream import Stream

        with pytest.raises(TypeError, match=rf"norm='{norm}' is not defined for complex"):
            Stream(m.eval()).step(torch.randn(2, 3, dtype=C))


@pytest.mark.parametrize("impl", ["auto", "torch", "loop"])
def test_complex_lengths_with_input_gradient_refused_in_words(impl):
    """lengths= packs the input with torch's pack_padded_sequence, which has no complex derivative:
    its error named neither lengths= nor the dtype. Without the input's gradient it runs."""
    m = rnnkit.GRU(3, 4, impl=impl, dtype=C)
    x, lengths = torch.randn(5, 2, 3, dtype=C, requires_grad=True), torch.tensor([5, 3])
    with pytest.raises(TypeError, match=r"lengths= cannot differentiate a complex input \(torch.complex128"):
        m(x, lengths=lengths)
    out, h = m(x.detach(), lengths=lengths)
    ref, h_ref = m(pack_padded_sequence(x.detach(), lengths))
    torch.testing.assert_close(h, h_ref)
    (g,) = torch.autograd.grad(_loss(out), [m.weight_hh_l0])
    assert g.is_complex() and g.abs().sum() > 0
    with torch.no_grad():
        m(x, lengths=lengths)  # no gradient: nothing to refuse


@pytest.mark.parametrize("impl", ["auto", "torch", "loop"])
@pytest.mark.parametrize("family", ["GRU", "LSTM", "RNN"])
def test_complex_between_layer_dropout_refused_in_words_as_torch_nn_fails(impl, family):
    """dropout= between layers draws torch's bernoulli_, which has no complex kernel: in training
    the layer (and torch.nn's) failed in its words ("bernoulli_scalar_cpu_" not implemented for
    'ComplexDouble'), naming neither the option nor the dtype. Evaluation, one layer and
    locked_dropout (real masks) run."""
    x = torch.randn(5, 2, 3, dtype=C)
    with pytest.raises(NotImplementedError):
        getattr(torch.nn, family)(3, 4, num_layers=2, dropout=0.5, dtype=C)(x)
    m = getattr(rnnkit, family)(3, 4, num_layers=2, dropout=0.5, impl=impl, dtype=C)
    msg = r"dropout=0.5 between layers has no complex kernel in torch.*torch.complex128.*locked_dropout=0.5"
    with pytest.raises(TypeError, match=msg):
        m(x)
    with pytest.raises(TypeError, match=msg):
        m(x[:, 0])  # unbatched
    assert m.eval()(x)[0].dtype == C
    locked = getattr(rnnkit, family)(3, 4, num_layers=2, locked_dropout=0.5, impl=impl, dtype=C)
    assert locked(x)[0].dtype == C
