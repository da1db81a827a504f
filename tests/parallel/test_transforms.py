"""MinGRU and MinLSTM (the ordinary, non-log scan) under ``torch.func`` transforms, forward-mode
AD and double backward: the promises tests/test_functorch.py and tests/test_double_backward.py
make for the recurrent layers, checked against plain autograd (the layer's own first-order
gradients, and the paper references' plain ops) in float64."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jacrev, jvp, vmap
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit

from ..test_functorch import per_sample_grads
from . import references
from .test_layers import make as layer

CASES = {
    "mingru": (rnnkit.MinGRU, {}),
    "minlstm": (rnnkit.MinLSTM, {}),
    "mingru_bidir2": (rnnkit.MinGRU, {"num_layers": 2, "bidirectional": True}),
    "minlstm_bidir2": (rnnkit.MinLSTM, {"num_layers": 2, "bidirectional": True}),
}


def make(name):
    cls, kw = CASES[name]
    torch.manual_seed(0)
    return cls(3, 4, **kw)


def h0_for(m, B):
    return torch.randn(m.num_layers * m.num_directions, B, m.hidden_size)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_jacrev_equals_autograd_jacobian(name, with_h0):
    m = make(name)
    x = torch.randn(5, 2, 3)
    h0 = h0_for(m, 2) if with_h0 else None

    def f(v):
        return m(v, h0)[0].sum(0)

    torch.testing.assert_close(jacrev(f)(x), torch.autograd.functional.jacobian(f, x))


@pytest.mark.parametrize("name", CASES)
def test_grad_and_per_sample_gradients_with_vmap(name):
    """grad(loss) equals autograd's gradient, and vmap(grad(loss)) over the batch equals the
    gradient of each sample alone."""
    m = make(name)
    x = torch.randn(5, 3, 3)
    per_sample, alone = per_sample_grads(m, x)
    for b, a in enumerate(alone):
        want = torch.autograd.grad(m(x[:, b : b + 1])[0].pow(2).sum(), list(m.parameters()))
        for k, w in zip(a, want, strict=True):
            torch.testing.assert_close(a[k], w)
            torch.testing.assert_close(per_sample[k][b], w)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's make_dual
@pytest.mark.parametrize("name", CASES)
def test_forward_mode_ad_equals_the_jacobian(name):
    import torch.autograd.forward_ad as fwAD

    m = make(name)
    x, t = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(m(fwAD.make_dual(x, t))[0]).tangent
    J = torch.autograd.functional.jacobian(lambda v: m(v)[0], x)
    torch.testing.assert_close(tangent, (J.reshape(tangent.numel(), -1) @ t.flatten()).view_as(tangent))
    _, jvp = torch.func.jvp(lambda v: m(v)[0], (x,), (t,))
    torch.testing.assert_close(tangent, jvp)


@pytest.mark.parametrize("name", CASES)
def test_gradgradcheck(name):
    """A gradient taken with create_graph=True (input, h0, a weight) differentiates again."""
    m = make(name)
    x = torch.randn(4, 2, 3, requires_grad=True)
    h0 = h0_for(m, 2).requires_grad_(True)
    params = dict(m.named_parameters())
    w = params.pop("weight_ih_l0")

    def f(x, h0, w):
        return functional_call(m, {**params, "weight_ih_l0": w}, (x, h0))[0]

    assert torch.autograd.gradgradcheck(f, (x, h0, w), fast_mode=True)


@pytest.mark.parametrize("name", CASES)
def test_double_backward_equals_the_plain_reference(name):
    """A gradient penalty's gradient (input, h0, every parameter) equals the paper reference's,
    whose plain ops autograd differentiates twice."""
    m = make(name)
    x = torch.randn(6, 2, 3, requires_grad=True)
    h0 = h0_for(m, 2).requires_grad_(True)
    leaves = [x, h0, *m.parameters()]

    def second(out):
        gx, gh = torch.autograd.grad(out.pow(2).sum(), (x, h0), create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum() + gh.pow(3).sum(), leaves)

    got, want = second(m(x, h0)[0]), second(references.stack(m, x, h0)[0])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("name", ["mingru", "minlstm_bidir2"])
def test_gradgradcheck_with_lengths(name):
    """The padded path (lengths: the gates, then rnnkit.ops.linear_scan) differentiates twice."""
    m = make(name)
    x = torch.randn(4, 2, 3, requires_grad=True)
    h0 = h0_for(m, 2).requires_grad_(True)
    lengths = torch.tensor([4, 2])
    assert torch.autograd.gradgradcheck(lambda x, h0: m(x, h0, lengths=lengths)[0], (x, h0), fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", CASES)
def test_batched_backward_equals_the_plain_reference(name, dtype):
    """torch.autograd.grad(..., is_grads_batched=True), which jacobian/hessian(vectorize=True) call,
    runs the backward under vmap: the fused scans' in-place backward failed there ('vmap: aten::copy_
    ... is not possible'), as the recurrent layers' fused kernels did; the plain reference works."""
    m = make(name).to(dtype)
    x, h0 = torch.randn(5, 2, 3, dtype=dtype), h0_for(m, 2).to(dtype)
    got, want = (
        torch.autograd.functional.jacobian(lambda x, f=f: f(x, h0)[0], x, vectorize=True)
        for f in (m, lambda x, h0: references.stack(m, x, h0))
    )
    tol = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(got, want, **tol)


TRANSFORM_CALLS = {
    "forward_ad-lengths": lambda m, x, lengths: _forward_ad(m, x, lengths=lengths),
    "forward_ad-packed": lambda m, x, lengths: _forward_ad(m, pack_padded_sequence(x, lengths)),
    "jvp-lengths": lambda m, x, lengths: jvp(lambda x: m(x, lengths=lengths)[0], (x,), (x,)),
    "grad-lengths": lambda m, x, lengths: grad(lambda x: m(x, lengths=lengths)[0].sum())(x),
    "vmap-lengths": lambda m, x, lengths: vmap(lambda x: m(x, lengths=lengths)[0])(x.unsqueeze(0)),
    "grad-packed": lambda m, x, lengths: grad(
        lambda p: functional_call(m, p, (pack_padded_sequence(x, lengths),))[0].data.sum()
    )(dict(m.named_parameters())),
}


def _forward_ad(m, x, **kw):
    """Forward-mode AD through the parameters (the input may be packed outside the level)."""
    with fwAD.dual_level():
        p = {k: fwAD.make_dual(v.detach(), torch.ones_like(v)) for k, v in m.named_parameters()}
        return functional_call(m, p, (x,), kw)


@pytest.mark.parametrize("call", TRANSFORM_CALLS)
@pytest.mark.parametrize("name", ["mingru", "minlstm_log", "qrnn", "lru"])
@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap's fallback for packing
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's make_dual
def test_lengths_and_packed_input_under_transforms_say_why(name, call):
    """torch's pack_padded_sequence / pad_packed_sequence support neither forward AD nor the
    torch.func transforms: a padded or packed batch failed there in torch's words ("Cannot
    access data pointer of Tensor that doesn't have storage", "Trying to use forward AD with
    _pack_padded_sequence"). Now in rnnkit's; outside them, and in a forward-AD level without
    dual numbers, the calls run as before."""
    m = layer(name)
    x, lengths = torch.randn(5, 2, 3), torch.tensor([5, 3])
    with pytest.raises(ValueError, match="not supported inside torch.func transforms .* or forward-mode AD"):
        TRANSFORM_CALLS[call](m, x, lengths)
    want = m(x, lengths=lengths)[0]
    with fwAD.dual_level():
        torch.testing.assert_close(m(x, lengths=lengths)[0], want)
        out = m(pack_padded_sequence(x, lengths))[0]
        torch.testing.assert_close(pad_packed_sequence(out)[0], want)
