"""rnnkit layers under ``torch.func`` transforms (``grad``, ``jacrev``, ``vmap``, ``jvp``) and
forward-mode AD.

There ``impl="auto"`` takes the reference loop (plain ops functorch and forward AD can see
through; the fused kernels' autograd nodes cannot be), so the results equal torch.nn's where
torch.nn works (``jacrev``, forward AD of its GRU/RNN) and also where it does not (``vmap``:
torch has no batching rule for its RNN ops): per-sample gradients of a recurrent model in one
call.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, jacrev, jvp, vmap
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit import dispatch

CASES = [("GRU", {}), ("LSTM", {"num_layers": 2, "bidirectional": True}), ("RNN", {"nonlinearity": "relu"})]


@pytest.mark.parametrize(("name", "kw"), CASES)
def test_jacrev_equals_torch(name, kw):
    torch.manual_seed(0)
    ours, ref = getattr(rnnkit, name)(3, 4, **kw), getattr(torch.nn, name)(3, 4, **kw)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3)
    j = jacrev(lambda v: ours(v)[0].sum(0))(x)
    torch.testing.assert_close(j, jacrev(lambda v: ref(v)[0].sum(0))(x))


@pytest.mark.parametrize(("name", "kw"), [*CASES, ("LSTM", {"norm": "layer"}), ("GRU", {"variant": "mut1"})])
def test_per_sample_gradients_with_vmap(name, kw):
    """vmap(grad(loss)) over the batch equals the gradient of each sample alone."""
    torch.manual_seed(0)
    m = getattr(rnnkit, name)(3, 4, **kw)
    per_sample, alone = per_sample_grads(m, torch.randn(5, 3, 3))
    for b, a in enumerate(alone):
        for k in a:
            torch.testing.assert_close(per_sample[k][b], a[k])


def per_sample_grads(m, x):
    """Of ``loss = (m(seq)[0] ** 2).sum()`` for each sequence of ``x (T, B, I)`` as a batch of
    one: ``vmap(grad(loss))`` over the batch (``{name: (B, *shape)}``) and ``grad(loss)`` of
    each sequence alone (a list of ``{name: shape}``)."""
    params = {k: v.detach() for k, v in m.named_parameters()}

    def loss(p, xi):  # one sequence (T, I) as a batch of one
        return functional_call(m, p, (xi.unsqueeze(1),))[0].pow(2).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 1))(params, x)
    return per_sample, [grad(loss)(params, x[:, b]) for b in range(x.shape[1])]


CELL_CASES = [("LSTMCell", {}), ("GRUCell", {"bias": False}), ("RNNCell", {"nonlinearity": "relu"})]


@pytest.mark.parametrize(("name", "kw"), CELL_CASES)
def test_cells_under_vmap_equal_each_call_alone(name, kw):
    """The cells take their own step inside transforms, as the layers the loop: torch's lstm_cell
    has no batching rule (vmap failed, as torch.nn.LSTMCell's does) and gru_cell / rnn_*_cell
    ran vmap's per-sample fallback with a warning (an error here). An ensemble of parameter
    sets (``stack_module_state``) and a batch of inputs, each equal to its call alone, and the
    gradient of torch.nn's cell under ``jacrev``."""
    torch.manual_seed(0)
    cell, ref = getattr(rnnkit, name)(3, 4, **kw), getattr(torch.nn, name)(3, 4, **kw)
    ref.load_state_dict(cell.state_dict())
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    hx = (h, torch.randn(2, 4)) if name == "LSTMCell" else h
    sets = [{k: v.detach() * s for k, v in cell.named_parameters()} for s in (1.0, 0.5, -2.0)]
    stacked = {k: torch.stack([p[k] for p in sets]) for k in sets[0]}
    got = _states(vmap(lambda p: functional_call(cell, p, (x, hx)))(stacked))
    for i, p in enumerate(sets):
        for a, b in zip(got, _states(functional_call(ref, p, (x, hx))), strict=True):
            torch.testing.assert_close(a[i], b, rtol=0, atol=1e-12)
    xs = torch.randn(5, 2, 3)
    want = torch.stack([_states(ref(v, hx))[0] for v in xs])
    torch.testing.assert_close(vmap(lambda v: _states(cell(v, hx))[0])(xs), want)
    j = jacrev(lambda v: _states(cell(v, hx))[0])(x)
    torch.testing.assert_close(j, jacrev(lambda v: _states(ref(v, hx))[0])(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's make_dual
@pytest.mark.parametrize(("name", "kw"), CELL_CASES)
def test_cells_under_forward_mode_ad_alone_are_torch_nns(name, kw):
    """Forward-mode AD is no transform to vmap: the cells keep torch's cell ops there, whose
    forward derivatives exist. The own step taken there too made rnnkit.LSTMCell's float32 output
    differ from torch.nn.LSTMCell's (and from its own call outside the dual level) in the last bit."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    f32 = torch.float32
    cell, ref = getattr(rnnkit, name)(3, 4, dtype=f32, **kw), getattr(torch.nn, name)(3, 4, dtype=f32, **kw)
    ref.load_state_dict(cell.state_dict())
    x, t = torch.randn(64, 3, dtype=f32), torch.randn(64, 3, dtype=f32)
    with fwAD.dual_level():
        got = [fwAD.unpack_dual(s) for s in _states(cell(fwAD.make_dual(x, t)))]
        want = [fwAD.unpack_dual(s) for s in _states(ref(fwAD.make_dual(x, t)))]
    for a, b, plain in zip(got, want, _states(cell(x)), strict=True):
        assert torch.equal(a.primal, b.primal) and torch.equal(a.tangent, b.tangent)
        assert torch.equal(a.primal, plain)


def _states(out):
    """A cell's output as a tuple: ``(h, c)`` of an LSTM cell, ``(h,)`` of the others."""
    return out if isinstance(out, tuple) else (out,)


def test_auto_takes_the_loop_inside_a_transform(monkeypatch):
    monkeypatch.setattr(rnnkit.kernels, "backend", lambda x: "ext")  # as if compiled (selection only)
    m = rnnkit.GRU(3, 4, dtype=torch.float32)
    x = torch.randn(5, 2, 3, dtype=torch.float32)
    seen = []
    assert dispatch.select(m, x) == "fused"  # outside: the fused kernels (CPU float32 GRU)
    grad(lambda v: seen.append(dispatch.select(m, v)) or v.sum())(x)
    assert seen == ["loop"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's make_dual
@pytest.mark.parametrize(("name", "kw"), [("GRU", {}), ("RNN", {}), ("LSTM", {"norm": "layer"})])
def test_forward_mode_ad(name, kw):
    """Dual numbers give the jvp of torch.func (and torch.nn's tangent where it has one)."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    f32 = torch.float32  # the dtype impl="auto" otherwise sends to the fused GRU/RNN kernels
    ours = getattr(rnnkit, name)(3, 4, dtype=f32, **kw)
    x, t = torch.randn(5, 2, 3, dtype=f32), torch.randn(5, 2, 3, dtype=f32)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(ours(fwAD.make_dual(x, t))[0]).tangent
    _, jvp = torch.func.jvp(lambda v: ours(v)[0], (x,), (t,))
    torch.testing.assert_close(tangent, jvp)
    if not kw:
        ref = getattr(torch.nn, name)(3, 4, dtype=f32)
        ref.load_state_dict(ours.state_dict())
        with fwAD.dual_level():
            torch.testing.assert_close(tangent, fwAD.unpack_dual(ref(fwAD.make_dual(x, t))[0]).tangent)


def test_forced_fused_path_refuses_transforms_clearly():
    m = rnnkit.GRU(3, 4, impl="fused")
    with pytest.raises(ValueError, match="impl='fused' cannot run inside torch.func"):
        grad(lambda v: m(v)[0].sum())(torch.randn(5, 2, 3))


TRANSFORM_CALLS = {  # (as tests/parallel/test_transforms.py's, which imports this file)
    "vmap-lengths": lambda m, x, lengths: vmap(lambda x: m(x, lengths=lengths)[0])(x.unsqueeze(0)),
    "grad-lengths": lambda m, x, lengths: grad(lambda x: m(x, lengths=lengths)[0].sum())(x),
    "jvp-lengths": lambda m, x, lengths: jvp(lambda x: m(x, lengths=lengths)[0], (x,), (x,)),
    "vmap-packed": lambda m, x, lengths: vmap(lambda x: m(pack_padded_sequence(x, lengths))[0].data)(
        x.unsqueeze(0)
    ),
}


@pytest.mark.parametrize("call", TRANSFORM_CALLS)
@pytest.mark.parametrize(
    ("name", "kw"), [("GRU", {}), ("LSTM", {"num_layers": 2}), ("RNN", {"bidirectional": True})]
)
@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap's fallback for packing
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's jvp
def test_lengths_and_packed_input_under_transforms_say_why(name, kw, call):
    """As the parallel layers (tests/parallel/test_transforms.py): under vmap, lengths= packs a
    batched batch_sizes, which the packed input's check read in torch's words ("Cannot access
    data pointer of Tensor that doesn't have storage"). Now rnnkit's, as in the other transforms;
    outside them the calls run as before."""
    m = getattr(rnnkit, name)(3, 4, **kw)
    x, lengths = torch.randn(5, 2, 3), torch.tensor([5, 3])
    with pytest.raises(ValueError, match="not supported inside torch.func transforms .* or forward-mode AD"):
        TRANSFORM_CALLS[call](m, x, lengths)
    want = m(x, lengths=lengths)[0]
    torch.testing.assert_close(pad_packed_sequence(m(pack_padded_sequence(x, lengths))[0])[0], want)
