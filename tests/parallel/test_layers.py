"""MinGRU, MinLSTM, QRNN and LRU: paper references, step loops, packing, directions, lengths."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.state import map_tensors

from . import references

LAYERS = {
    "mingru": (rnnkit.MinGRU, {}),
    "mingru_log": (rnnkit.MinGRU, {"log_space": True}),
    "minlstm": (rnnkit.MinLSTM, {}),
    "minlstm_log": (rnnkit.MinLSTM, {"log_space": True}),
    "qrnn": (rnnkit.QRNN, {}),
    "qrnn_w1": (rnnkit.QRNN, {"window": 1}),
    "lru": (rnnkit.LRU, {"r_min": 0.5}),
    "lru_dense_d": (rnnkit.LRU, {"state_size": 3}),
}
NAMES = list(LAYERS)


def make(name, I=3, H=4, seed=0, **kw):
    cls, opts = LAYERS[name]
    torch.manual_seed(seed)
    return cls(I, H if name != "lru" else I, **{**opts, **kw})


def state(m, B=None, positive=False):
    shape = (m.num_layers * m.num_directions, *(() if B is None else (B,)), m.state_size)
    s = torch.randn(shape, dtype=m.state_dtype)
    return (s.abs() + 0.1 if positive else s).requires_grad_(True)


def _close_all(got, want, tol=1e-9):
    assert len(got) == len(want)
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)


def flat(out):
    """``(output, h_n)`` as a flat list of tensors (QRNN window=2: ``h_n = (c, x_prevs)``)."""
    leaves = []
    map_tensors(leaves.append, out)
    return leaves


def seq(h, i):
    """Sequence ``i`` of a batched ``h_n``, as the unbatched call returns it."""
    if isinstance(h, tuple):  # QRNN window=2: (c (LD, B, H), (x_prev_k (B, I_k), ...))
        return h[0][:, i], tuple(p[i] for p in h[1])
    return h[:, i]


def c_of(h):
    """The recurrent state tensor of ``h_n`` (``c`` of the QRNN's ``(c, x_prevs)``)."""
    return h[0] if isinstance(h, tuple) else h


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("L,bidir", [(1, False), (2, True)])
@pytest.mark.parametrize("with_h0", [False, True])
def test_matches_paper_reference(name, L, bidir, with_h0):
    """Forward, final state and every gradient (input, h0, parameters) in float64."""
    m = make(name, num_layers=L, bidirectional=bidir)
    x = torch.randn(7, 2, m.input_size, requires_grad=True)
    h0 = state(m, 2, positive="log" in name) if with_h0 else None
    got, want = flat(m(x, h0)), flat(references.stack(m, x, h0))
    _close_all(got, want)
    leaves = [x, *([h0] if with_h0 else []), *m.parameters()]
    w = [torch.randn_like(t) for t in want]
    _close_all(torch.autograd.grad(got, leaves, w), torch.autograd.grad(want, leaves, w))


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck(name):
    m = make(name, H=3, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, m.input_size, requires_grad=True)
    h0 = state(m, 2, positive="log" in name)
    assert torch.autograd.gradcheck(lambda x, h0: m(x, h0)[0], (x, h0))


@pytest.mark.parametrize("name", NAMES)
def test_step_loop_matches_whole_sequence(name):
    m = make(name, num_layers=2, dropout=0.3).eval()
    x = torch.randn(9, 2, m.input_size)
    h0 = state(m, 2, positive="log" in name).detach()
    out, h_n = m(x, h0)
    s = h0
    if getattr(m, "window", 1) == 2:  # QRNN: the state also holds each layer's previous input
        s = (h0, (torch.zeros(2, 3), torch.zeros(2, m.hidden_size)))
    ys = []
    for t in range(x.shape[0]):
        y, s = m.step(x[t], s)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys), out)
    torch.testing.assert_close(s, h_n)  # QRNN window=2: (c, x_prevs) both ways
    y1, _ = m.step(x[0, 0])  # unbatched step from zeros == the batched whole sequence's first step
    torch.testing.assert_close(y1, m(x[:1, :1])[0][0, 0])


@pytest.mark.parametrize("name", NAMES)
def test_packed_equals_each_sequence_alone(name):
    m = make(name, num_layers=2, bidirectional=True)
    lengths = torch.tensor([3, 6, 1, 4])
    x = torch.randn(6, 4, m.input_size)
    h0 = state(m, 4, positive="log" in name).detach()
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, h_n = m(packed, h0)
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    assert torch.equal(out.unsorted_indices, packed.unsorted_indices)
    padded, _ = pad_packed_sequence(out)
    for i, n in enumerate(lengths.tolist()):
        y, h = m(x[:n, i], h0[:, i])  # unbatched, alone
        torch.testing.assert_close(padded[:n, i], y)
        torch.testing.assert_close(seq(h_n, i), h)
        assert not padded[n:, i].any()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_equal_packing(name, batch_first):
    """``lengths=`` on a padded batch, as rnnkit.LSTM takes it: the packed call's numbers,
    padded back (zeros past each length), with the same checks on bad lengths."""
    m = make(name, num_layers=2, bidirectional=True, batch_first=batch_first)
    lengths = torch.tensor([3, 6, 1, 4])
    x = torch.randn((4, 6, m.input_size) if batch_first else (6, 4, m.input_size))
    out, h_n = m(x, None, lengths)
    want, want_h = m(pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False))
    torch.testing.assert_close(out, pad_packed_sequence(want, batch_first=batch_first, total_length=6)[0])
    torch.testing.assert_close(h_n, want_h)
    with pytest.raises(ValueError, match="lengths must lie in"):
        m(x, None, torch.tensor([3, 7, 1, 4]))
    with pytest.raises(ValueError, match="3-D"):
        m(x[:, 0] if not batch_first else x[0], None, torch.tensor([3]))


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_is_forward_plus_reversed(name):
    m = make(name, bidirectional=True)
    fwd, bwd = make(name), make(name)
    with torch.no_grad():
        for k, v in m.layer_params(0, 1).items():
            getattr(bwd, f"{k}_l0").copy_(v)
        for k, v in m.layer_params(0, 0).items():
            getattr(fwd, f"{k}_l0").copy_(v)
    x = torch.randn(5, 3, m.input_size)
    out, h_n = m(x)
    H = out.shape[-1] // 2
    yf, hf = fwd(x)
    yb, hb = bwd(x.flip(0))
    torch.testing.assert_close(out[..., :H], yf)
    torch.testing.assert_close(out[..., H:], yb.flip(0))
    torch.testing.assert_close(c_of(h_n), torch.cat([c_of(hf), c_of(hb)]))
    if isinstance(h_n, tuple):  # QRNN window=2: x_prev is the layer's last input, in both cases
        torch.testing.assert_close(h_n[1], hf[1])


@pytest.mark.parametrize("name", NAMES)
def test_batch_first_and_unbatched(name):
    m = make(name, num_layers=2)
    mb = make(name, num_layers=2, batch_first=True)
    x = torch.randn(5, 3, m.input_size)
    out, h = m(x)
    outb, hb = mb(x.transpose(0, 1))
    torch.testing.assert_close(outb.transpose(0, 1), out)
    torch.testing.assert_close(hb, h)
    o1, h1 = m(x[:, 1])
    torch.testing.assert_close(o1, out[:, 1])
    torch.testing.assert_close(h1, seq(h, 1))


@pytest.mark.parametrize("name", ["mingru", "minlstm", "qrnn", "lru", "mingru_log"])
def test_long_sequence_stays_finite(name):
    torch.set_default_dtype(torch.float32)
    m = make(name, H=4)
    x = (torch.randn(100_000, 2, m.input_size) * 3).requires_grad_(True)
    out, h = m(x)
    h = c_of(h)
    assert torch.isfinite(out).all() and torch.isfinite(torch.view_as_real(h) if h.is_complex() else h).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_ext_and_fallback_give_identical_layer_numbers(monkeypatch):
    from rnnkit.ops import backend

    if backend(torch.zeros(1)) != "ext":
        pytest.skip("C++ kernel unavailable")
    res = []
    for env in ("0", "1"):
        monkeypatch.setenv("RNNKIT_NO_EXT", env)
        m = make("mingru", num_layers=2, bidirectional=True, dtype=torch.float32)
        x = torch.randn(20, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
        out, h = m(x)
        res.append([out, h, *torch.autograd.grad(out.square().sum(), list(m.parameters()))])
    for u, v in zip(*res):
        assert torch.equal(u, v)


def test_qrnn_step_state_is_checked_against_the_input_batch():
    """QRNN(window=2).step checked its state against the state's own batch: a state of
    another batch, or a 2-D c for a batched input, met torch.cat's size error or an
    x_prev error naming a batch of 1; it is h_0's error, as for the other layers."""
    m = make("qrnn", num_layers=2)
    x = torch.randn(4, 3)
    for c, n in [(torch.zeros(2, 1, 4), 1), (torch.zeros(2, 5, 4), 5), (torch.zeros(2, 4), 1)]:
        with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 4, 4\), got"):
            m.step(x, (c, (torch.zeros(n, 3), torch.zeros(n, 4))))
    with pytest.raises(ValueError, match=r"expected x_prev_0 of shape \(4, 3\), got \(1, 3\)"):
        m.step(x, (torch.zeros(2, 4, 4), (torch.zeros(1, 3), torch.zeros(4, 4))))
    y, (c, prevs) = m.step(x[0], (torch.zeros(2, 4), (torch.zeros(3), torch.zeros(4))))  # unbatched
    assert y.shape == (4,) and c.shape == (2, 4) and [p.shape for p in prevs] == [(3,), (4,)]


# torch's dynamo instantiates autograd.Function classes itself and trips its own deprecation
# minLSTM's hand-written backward wrote sigmoid(out=) into chunks of its gradient: dynamo refused it
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.parametrize("name", ["mingru", "minlstm", "minlstm_log", "qrnn", "lru"])
def test_compile_fullgraph(name):
    m = make(name, num_layers=2)
    x = torch.randn(5, 2, 3, requires_grad=True)
    f = torch.compile(lambda x: m(x)[0].square().sum(), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(torch.autograd.grad(f(x), x), torch.autograd.grad(m(x)[0].square().sum(), x))


@pytest.mark.parametrize("name,scans", [("mingru", 2), ("minlstm_log", 0), ("qrnn_w1", 1), ("lru", 2)])
def test_export(name, scans):
    """torch.export: the ``rnnkit.linear_scan`` custom op in the graph (one per layer-direction;
    the log-space layers scan with their own ops), the eager numbers."""
    m = make(name, bidirectional=name in ("mingru", "lru")).eval()
    x = torch.randn(5, 2, 3)
    ep = torch.export.export(m, (x,))
    assert sum("rnnkit.linear_scan." in str(n.target) for n in ep.graph.nodes) == scans
    _close_all(flat(ep.module()(x)), flat(m(x)))


def test_clear_errors():
    m = make("mingru", bidirectional=True)
    with pytest.raises(ValueError, match="input_size=3"):
        m(torch.randn(5, 2, 4))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 2, 4\)"):
        m(torch.randn(5, 2, 3), torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="bidirectional"):
        m.step(torch.randn(2, 3))
    with pytest.raises(ValueError, match="window must be 1 or 2"):
        rnnkit.QRNN(3, 4, window=3)
    with pytest.raises(ValueError, match="zoneout"):
        rnnkit.QRNN(3, 4, zoneout=1.0)
    with pytest.raises(ValueError, match="r_min"):
        rnnkit.LRU(3, 4, r_min=0.9, r_max=0.5)
    # NaN or inf phases made every output NaN; state_size=True failed deep in torch.empty
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match=rf"max_phase must be a finite number >= 0, got {bad}"):
            rnnkit.LRU(3, 4, max_phase=bad)
    with pytest.raises(ValueError, match="state_size must be a positive int, got True"):
        rnnkit.LRU(3, 4, state_size=True)
    # log_space='False' (a true string) chose the log-space scan silently
    for cls in (rnnkit.MinGRU, rnnkit.MinLSTM):
        with pytest.raises(TypeError, match="log_space should be of type bool, got: str"):
            cls(3, 4, log_space="False")
    with pytest.raises(ValueError, match="must be >= 0 everywhere"):
        make("mingru_log")(torch.randn(5, 2, 3), -torch.ones(1, 2, 4))
    with pytest.raises(ValueError, match="complex"):
        make("lru")(torch.randn(5, 2, 3), torch.zeros(1, 2, 3))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_batch_gives_empty_outputs_and_states(name, batch_first):
    """A batch of 0 sequences: empty output and state of the right shapes, as torch.nn's layers
    and rnnkit.LSTM give (the checks refused it, and ``.view(..., -1)`` could not infer a size
    from no elements), with lengths= too and through step() and backward."""
    m = make(name, num_layers=2, bidirectional=True, batch_first=batch_first)
    x = torch.randn((0, 5, 3) if batch_first else (5, 0, 3), requires_grad=True)
    _, like = m(torch.randn((1, 5, 3) if batch_first else (5, 1, 3)))  # the state of a batch of one

    def shapes(h, batch=None):  # the batch is the next-to-last dimension: c (LD, N, S), x_prev (N, I)
        return map_tensors(lambda t: (*t.shape[:-2], t.shape[-2] if batch is None else batch, t.shape[-1]), h)

    empty = shapes(like, 0)
    out, h_n = m(x)
    assert out.shape == ((0, 5, 2 * m.hidden_size) if batch_first else (5, 0, 2 * m.hidden_size))
    assert shapes(h_n) == empty
    out.sum().backward()
    assert x.grad.shape == x.shape
    for lengths in (None, torch.zeros(0, dtype=torch.long)):  # the empty state as h_0, lengths=
        out2, h2 = m(x, h_n, lengths)
        assert out2.shape == out.shape
        assert shapes(h2) == empty
    one = make(name, num_layers=2)
    y, s = one.step(torch.randn(0, 3))
    y, s = one.step(torch.randn(0, 3), s)
    assert y.shape == (0, one.hidden_size)
    assert shapes(s) == shapes(one.step(torch.randn(1, 3))[1], 0)


def test_lru_d_init_is_what_the_docstring_says():
    """The docstring said ``D ~ N(0, 1)``; the dense ``D`` (input_size != hidden_size, not in the
    paper) is drawn ``N(0, 1/H_in)``, the diagonal one ``N(0, 1)`` as the paper's code."""
    from rnnkit.parallel import lru

    torch.manual_seed(0)
    diag, dense = rnnkit.LRU(400, 400).D_l0.detach(), rnnkit.LRU(400, 300).D_l0.detach()
    assert diag.shape == (400,) and dense.shape == (300, 400)
    assert abs(float(diag.std()) - 1.0) < 0.1 and abs(float(dense.std()) * 400**0.5 - 1.0) < 0.02
    doc = " ".join(lru.__doc__.split())
    assert "``D`` is diagonal ``(H,)`` with entries ``N(0, 1)`` as in the paper" in doc
    assert "dense ``(H, H_in)`` matrix with entries ``N(0, 1/H_in)``" in doc


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_output_may_be_modified_in_place_as_torch_nn_s(name, num_layers):
    """minGRU's and minLSTM's scans return the output they save for backward (the fused ones a view
    of it): an in-place op on it, ``nn.Dropout(inplace=True)`` after the layer as AWD-LSTM-style
    models have, failed ('Output 0 of _MinGRUScan is a view and is being modified inplace', or at
    backward, 'modified by an inplace operation'), where torch.nn's layers allow it. The gradients
    are those of the out-of-place op."""
    m = make(name, num_layers=num_layers)
    x = torch.randn(5, 2, 3)
    h0 = state(m, 2, positive=True).detach() if name.endswith("_log") else None
    y, h_n = m(x, h0)
    h_before = map_tensors(lambda t: t.detach().clone(), h_n)
    want = torch.autograd.grad(torch.relu(y).square().sum(), list(m.parameters()))
    y, h_n = m(x, h0)
    torch.relu_(y)  # in place, as nn.ReLU(inplace=True) / nn.Dropout(inplace=True)
    got = torch.autograd.grad(y.square().sum(), list(m.parameters()))
    _close_all(got, want)
    torch.testing.assert_close(h_n, h_before, rtol=0, atol=0)  # the state is not the output
