"""Drop-in interface: names, init, state_dict both ways, variable lengths, cells, numpy arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit

from .conftest import make_pair

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
MODES = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kw", [{}, {"bidirectional": True}, {"bias": False}, {"proj_size": 2}])
def test_names_shapes_init_match_torch(mode, kw):
    if "proj_size" in kw and mode != "LSTM":
        pytest.skip("proj_size is LSTM-only, as in torch")
    a, b = make_pair(mode, 3, 4, 3, **kw)
    na, nb = dict(a.named_parameters()), dict(b.named_parameters())
    assert list(na) == list(nb)
    for k in na:
        assert na[k].shape == nb[k].shape and torch.equal(na[k], nb[k]), k
    assert type(a).__name__ == type(b).__name__


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip(mode):
    a, b = make_pair(mode, 3, 4, 2, bidirectional=True, seed=1)
    _, c = make_pair(mode, 3, 4, 2, bidirectional=True, seed=2)
    c.load_state_dict(a.state_dict())  # rnnkit -> torch
    a2, _ = make_pair(mode, 3, 4, 2, bidirectional=True, seed=3)
    a2.load_state_dict(b.state_dict())  # torch -> rnnkit
    x = torch.randn(5, 2, 3)
    for u, v in zip(a(x)[0], c(x)[0]):
        torch.testing.assert_close(u, v)
    torch.testing.assert_close(a2(x)[0], b(x)[0])


@pytest.mark.parametrize("impl", ["auto", "loop"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidir", [False, True])
def test_packed_equals_each_sequence_alone(impl, mode, bidir):
    a, _ = make_pair(mode, 3, 4, 2, bidirectional=bidir, impl=impl, batch_first=True)
    lengths = torch.tensor([3, 6, 1, 4])
    x = torch.randn(4, 6, 3)
    out, hn = a(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    padded, _ = pad_packed_sequence(out, batch_first=True)
    hn = hn[0] if mode == "LSTM" else hn
    for i, n in enumerate(lengths.tolist()):
        alone, h_alone = a(x[i : i + 1, :n])
        h_alone = h_alone[0] if mode == "LSTM" else h_alone
        torch.testing.assert_close(padded[i : i + 1, :n], alone)
        assert torch.all(padded[i, n:] == 0)
        torch.testing.assert_close(hn[:, i], h_alone[:, 0])
    # the rnnkit extra: lengths= on a padded batch gives the same result
    out2, hn2 = a(x, lengths=lengths)
    torch.testing.assert_close(out2, padded)
    torch.testing.assert_close(hn2[0] if mode == "LSTM" else hn2, hn)
    # padding past the longest sequence too: the output keeps the input's T, zeros past each length
    out3, _ = a(torch.cat([x, torch.randn(4, 2, 3)], 1), lengths=lengths)
    assert out3.shape == (4, 8, out2.shape[-1]) and torch.all(out3[:, 6:] == 0)
    torch.testing.assert_close(out3[:, :6], padded)


@pytest.mark.parametrize("mode", MODES)
def test_bidirectional_is_forward_plus_reversed(mode):
    a, _ = make_pair(mode, 3, 4, 1, bidirectional=True, impl="loop")
    f, _ = make_pair(mode, 3, 4, 1, impl="loop")
    r, _ = make_pair(mode, 3, 4, 1, impl="loop")
    sd = a.state_dict()
    f.load_state_dict({k: v for k, v in sd.items() if not k.endswith("_reverse")})
    r.load_state_dict({k.removesuffix("_reverse"): v for k, v in sd.items() if k.endswith("_reverse")})
    x = torch.randn(5, 2, 3)
    out, _ = a(x)
    torch.testing.assert_close(out[..., :4], f(x)[0])
    torch.testing.assert_close(out[..., 4:], r(x.flip(0))[0].flip(0))


@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
@pytest.mark.parametrize("bias", [True, False])
def test_cells_match_torch(name, bias):
    torch.manual_seed(0)
    a = getattr(rnnkit, name)(3, 4, bias=bias)
    torch.manual_seed(0)
    b = getattr(nn, name)(3, 4, bias=bias)
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    x = torch.randn(2, 3, requires_grad=True)
    for hx in [
        None,
        (torch.randn(2, 4), torch.randn(2, 4)) if name == "LSTMCell" else torch.randn(2, 4),
    ]:
        for inp, h in [
            (x, hx),
            (
                x[0],
                None if hx is None else (tuple(s[0] for s in hx) if isinstance(hx, tuple) else hx[0]),
            ),
        ]:
            ya, yb = a(inp, h), b(inp, h)
            ya, yb = (ya, yb) if isinstance(ya, tuple) else ((ya,), (yb,))
            for u, v in zip(ya, yb):
                torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)
    # the generic step (no torch kernel) computes the same
    ref = a.cell
    p = a.params()
    state = tuple(torch.zeros(2, 4) for _ in ref.state_names)
    new = ref.step(p, ref.project_input(p, x), state, rnnkit.cells.StepContext())
    want = b(x)
    want = want if isinstance(want, tuple) else (want,)
    for u, v in zip(new, want):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)


def test_detach_state():
    h = torch.zeros(2, requires_grad=True) * 2
    assert rnnkit.detach_state(None) is None
    assert not rnnkit.detach_state(h).requires_grad
    hs = rnnkit.detach_state((h, [h, h]))
    assert isinstance(hs, tuple) and isinstance(hs[1], list)
    assert not any(t.requires_grad for t in (hs[0], *hs[1]))
    assert rnnkit.detach_state({"h": h})["h"].requires_grad is False
    assert rnnkit.detach_state(3) == 3  # non-tensors pass through


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("kw", [{}, {"batch_first": True, "num_layers": 2, "bidirectional": True}])
def test_a_batch_of_no_sequences_gives_torch_empty_results(name, kw):
    """torch.nn accepts a dense batch of zero sequences (an empty bucket): empty outputs and
    final states, given or not, and a loss over them backpropagates (zero gradients)."""
    torch.manual_seed(0)
    ours, ref = getattr(rnnkit, name)(3, 2, **kw), getattr(nn, name)(3, 2, **kw)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn((0, 4, 3) if kw.get("batch_first") else (4, 0, 3), requires_grad=True)
    L = 2 * kw.get("num_layers", 1) if kw.get("bidirectional") else 1
    h0 = torch.zeros(L, 0, 2)
    for hx in (None, (h0, h0) if name == "LSTM" else h0):
        (ya, sa), (yb, sb) = ours(x, hx), ref(x, hx)
        assert ya.shape == yb.shape and ya.requires_grad and ya.dtype == yb.dtype
        for u, v in zip(sa if name == "LSTM" else (sa,), sb if name == "LSTM" else (sb,)):
            assert u.shape == v.shape
        ya.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("impl", ["auto", "loop"])
def test_a_batch_of_no_sequences_backpropagates_from_the_final_state(name, impl):
    """A loss over ``h_n`` of an empty batch raised ("does not require grad") where torch.nn's
    gives zero gradients, and only the first parameter got one from the output: now every
    parameter, the input and ``h_0`` get torch.nn's zero gradients from either."""
    kw = {"num_layers": 2, "bidirectional": True}
    ours, ref = getattr(rnnkit, name)(3, 2, impl=impl, **kw), getattr(nn, name)(3, 2, **kw)
    ref.load_state_dict(ours.state_dict())
    for m in (ours, ref):
        x, h0 = torch.randn(4, 0, 3, requires_grad=True), torch.zeros(4, 0, 2, requires_grad=True)
        y, s = m(x, (h0, h0) if name == "LSTM" else h0)
        h_n = s[0] if name == "LSTM" else s
        (y.sum() + h_n.sum()).backward()
        assert x.grad.shape == x.shape and h0.grad.shape == h0.shape
        assert all(p.grad is not None and not p.grad.any() for p in m.parameters())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch's jvp
def test_a_batch_of_no_sequences_meets_a_forced_impl_s_refusals():
    """A forced ``impl`` that cannot run a call (impl='torch' with recurrent dropout in training,
    impl='fused' on complex parameters or under forward-mode AD) raised for a batch of sequences
    but returned empty results for a batch of none: the refusal does not depend on the batch."""
    x = torch.randn(5, 0, 3)
    m = rnnkit.LSTM(3, 4, recurrent_dropout=0.3, impl="torch").train()
    with pytest.raises(ValueError, match="impl='torch' needs a configuration torch.nn supports"):
        m(x)
    m.eval()(x)  # in evaluation torch's kernels compute it: empty results, as for a batch
    with pytest.warns(UserWarning, match="Complex modules"):  # (torch's, at .to(complex))
        c = rnnkit.GRU(3, 4, impl="fused").to(torch.complex128)
    with pytest.raises(TypeError, match="impl='fused' has no kernel for complex dtypes"):
        c(x.to(torch.complex128))
    f = rnnkit.GRU(3, 4, impl="fused")
    with pytest.raises(ValueError, match="impl='fused' cannot run inside torch.func transforms"):
        torch.func.jvp(lambda u: f(u)[0], (x,), (x,))
    assert f(x)[0].shape == (5, 0, 4)  # outside them: torch.nn's empty results


def test_mode_is_torch_mode_whatever_the_options():
    pairs = [
        (rnnkit.LSTM(3, 4, norm="layer", peephole=False), nn.LSTM(3, 4)),
        (rnnkit.GRU(3, 4, variant="mut1"), nn.GRU(3, 4)),
        (rnnkit.RNN(3, 4, nonlinearity="relu"), nn.RNN(3, 4, nonlinearity="relu")),
        (rnnkit.RNN(3, 4), nn.RNN(3, 4)),
    ]
    assert [a.mode for a, _ in pairs] == [b.mode for _, b in pairs]


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_a_cell_on_no_sequences_gives_torch_empty_results(name):
    ours, ref = getattr(rnnkit, name)(3, 2), getattr(nn, name)(3, 2)
    ya, yb = ours(torch.randn(0, 3)), ref(torch.randn(0, 3))
    assert [t.shape for t in (ya if isinstance(ya, tuple) else (ya,))] == [
        t.shape for t in (yb if isinstance(yb, tuple) else (yb,))
    ]


def test_numpy_integer_sizes_are_kept_as_ints():
    """A cell (and so a layer, which hands its sizes to its cells) took numpy's integers but kept
    them: the specs' shapes, and the errors naming them, read '(np.int64(16), np.int64(4))'."""
    np = pytest.importorskip("numpy")
    m = rnnkit.LSTM(np.int64(3), np.int64(4), proj_size=np.int64(2))
    assert all(type(getattr(m.cells[0], n)) is int for n in ("input_size", "hidden_size", "proj_size"))
    m.weight_hh_l0 = nn.Parameter(torch.randn(17, 2))
    with pytest.raises(rnnkit.RecurrentInputError, match=r"weight_hh_l0 must have shape \(16, 2\), got"):
        m(torch.randn(5, 2, 3))
    c = rnnkit.GRUCell(np.int32(3), np.int64(4))
    assert type(c.cell.input_size) is type(c.cell.hidden_size) is int


def test_numpy_scalars_are_numbers():
    """np.float32(0.5) (no float subclass, unlike np.float64) and np.int64 were refused as
    'must be a number in [0, 1]' for dropout, the regularizers' probabilities, QRNN's zoneout,
    LRU's max_phase and forget_bias, where torch.nn takes numpy scalars for dropout (sweeps
    often produce them). They are taken as the Python numbers they hold."""
    np = pytest.importorskip("numpy")
    half = np.float32(0.5)
    m = rnnkit.LSTM(3, 4, 2, dropout=half, zoneout=half, weight_drop=half, forget_bias=np.float32(1.0))
    assert m.dropout == 0.5 and m.weight_drop == 0.5 and m.zoneout_probs[0] == (0.5, 0.5)
    assert rnnkit.GRU(3, 4, 2, dropout=np.int64(0)).dropout == 0.0
    assert (
        rnnkit.LockedDropout(half).p == 0.5
        and rnnkit.LSTMCell(3, 4, recurrent_dropout=half).recurrent_dropout == 0.5
    )
    assert rnnkit.QRNN(3, 4, zoneout=half).zoneout == 0.5
    assert rnnkit.LRU(3, 4, max_phase=np.float32(1.0)).max_phase == 1.0


def test_numpy_integer_sizes_as_torch_nn():
    """proj_size (taken by torch.nn's LSTM), max_len and the LRU's state_size refused numpy's
    integers ('must be a ... int') where the layers' other sizes take them: kept as ints."""
    np = pytest.importorskip("numpy")
    m = rnnkit.LSTM(3, 4, proj_size=np.int64(2))
    assert type(m.proj_size) is int and m(torch.randn(5, 2, 3))[0].shape == (5, 2, 2)
    for cls in (rnnkit.LSTM, rnnkit.LSTMCell):
        cell = cls(3, 4, norm="batch", max_len=np.int64(6))
        cell = cell.cells[0] if isinstance(cell, rnnkit.LSTM) else cell.cell
        assert type(cell.max_len) is int and cell.max_len == 6
    lru = rnnkit.LRU(3, 4, state_size=np.int32(6))
    assert type(lru.state_size) is int and lru.state_size == 6
    with pytest.raises(ValueError, match="max_len must be a positive int, got True"):
        rnnkit.LSTM(3, 4, norm="batch", max_len=True)


def test_dropout_single_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        rnnkit.GRU(3, 4, dropout=0.5)


@pytest.mark.parametrize("impl", ["auto", "fused", "loop"])
@pytest.mark.parametrize("mode", MODES)
def test_dropout_leaves_the_last_layers_output_alone(impl, mode):
    """As torch.nn's, ``dropout`` acts between layers only: in training the last layer's output at
    its last step is still its final ``h`` (no zeros, no ``1 / (1 - p)`` scaling)."""
    a, _ = make_pair(mode, 3, 4, 2, dropout=0.5, impl=impl)
    out, hn = a.train()(torch.randn(5, 6, 3))
    hn = hn[0] if mode == "LSTM" else hn
    torch.testing.assert_close(out[-1], hn[-1])


def test_copy_pickle_and_all_weights(tmp_path):
    import copy

    a, b = make_pair("LSTM", 3, 4, 2, bidirectional=True)
    x = torch.randn(5, 2, 3)
    for m in (copy.deepcopy(a), _reload(a, tmp_path)):
        torch.testing.assert_close(m(x)[0], a(x)[0])
    assert [[w.shape for w in ws] for ws in a.all_weights] == [[w.shape for w in ws] for ws in b.all_weights]
    a.flatten_parameters()  # CPU: a no-op, as in torch
    a.to(torch.float32)
    assert a.weight_ih_l0.dtype == torch.float32


def _reload(m, tmp_path):
    torch.save(m, tmp_path / "m.pt")
    return torch.load(tmp_path / "m.pt", weights_only=False)
