"""Property tests: the fused path equals the reference loop for random combinations of cell
option, regularizers, layout and input form (float64, forward, final states, batch-norm
running statistics and every gradient), on both fused backends; and the float32 kernels,
which have code of their own, at odd sizes against the float64 loop (and the float32 LSTM's
regularized and normalized paths on 1-3 threads, under the same masks).

The parametrized tests of this folder pin each feature on its own or in a few chosen pairs;
this one lets hypothesis combine them (e.g. a layer-norm GRU, bidirectional, with zoneout and
weight-drop, on unsorted packed input in evaluation), so that an interaction no table listed
still meets the oracle. Both paths draw the call's masks from torch's RNG in the same order.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit
from rnnkit import dispatch

from ..conftest import default_dtype, pure_kernels
from .test_fused_kernels import require_ext

CELL_OPTIONS = {
    "lstm": [
        {},
        {"peephole": True},
        {"norm": "layer"},
        {"norm": "batch", "max_len": 3},
        {"norm": "layer", "peephole": True},
        {"norm": "batch", "max_len": 3, "peephole": True},
        {"forget_bias": 1.0},
        {"input_gate": False},
        {"forget_gate": False},
        {"output_gate": False},
        {"input_activation": False},
        {"output_activation": False},
        {"coupled_gates": True},
        {"full_gate_recurrence": True},
    ],
    "gru": [
        {},
        {"reset_after": False},
        {"variant": "mut1"},
        {"variant": "mut2"},
        {"variant": "mut3"},
        {"norm": "layer"},
    ],  # fmt: skip
    "rnn": [
        {"nonlinearity": "tanh"},
        {"nonlinearity": "relu"},
        {"norm": "layer"},
        {"norm": "layer", "nonlinearity": "relu"},
    ],  # fmt: skip
}
CLASSES = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}


@st.composite
def configs(draw):
    family = draw(st.sampled_from(sorted(CELL_OPTIONS)))
    kw = dict(draw(st.sampled_from(CELL_OPTIONS[family])))
    L = draw(st.integers(1, 2))
    if family == "lstm" and draw(st.booleans()):
        kw["proj_size"] = 2
    kw.update(
        num_layers=L,
        bidirectional=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        recurrent_dropout=draw(st.sampled_from([0.0, 0.3])),
        zoneout=draw(st.sampled_from([0.0, 0.2])),
        weight_drop=draw(st.sampled_from([0.0, 0.4])),
    )
    if L == 2:
        kw["locked_dropout"] = draw(st.sampled_from([0.0, 0.3]))
        kw["dropout"] = draw(st.sampled_from([0.0, 0.25]))
    return family, kw


def _pair(family, kw, I, H, training, scale, dtype=torch.float64):
    """The fused layer (in ``dtype``) and the float64 reference loop with the same weights, none
    at a special value (zero peepholes, unit gains)."""
    with default_dtype(dtype):
        a = CLASSES[family](I, H, impl="fused", **kw).train(training)
    assume(dispatch.fused_supported(a))  # the rest run on the loop anyway
    b = CLASSES[family](I, H, impl="loop", **kw).train(training)
    with torch.no_grad():
        for p in a.parameters():
            p.uniform_(-scale, scale)
    b.load_state_dict({k: v.double() for k, v in a.state_dict().items()})
    return a, b


def _lengths(B, T):
    lengths = torch.randint(1, T + 1, (B,))
    lengths[torch.randint(B, ())] = T
    return lengths


def _run(m, data, form, lengths=None, hx=None, seed=0, dtype=torch.float64):
    """Outputs (output data, final states) and the gradients of a fixed readout of them with
    respect to the input, the initial state and every parameter (float64; None where unused).
    ``form``: ``"dense"``, ``"packed"`` (packed here, unsorted) or ``"lengths"`` (``lengths=``)."""
    leaf = data.to(dtype).requires_grad_(True)
    x = leaf
    if form == "packed":
        x = pack_padded_sequence(leaf, lengths, batch_first=m.batch_first, enforce_sorted=False)
    torch.manual_seed(seed)  # the call's masks
    out, state = m(x, hx, lengths) if form == "lengths" else m(x, hx)
    outs = [
        out.data if isinstance(out, PackedSequence) else out,
        *(state if isinstance(state, tuple) else (state,)),
    ]
    readout = sum((o.double() * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs)
    states = hx if isinstance(hx, tuple) else (hx,) if hx is not None else ()
    grads = torch.autograd.grad(readout, [leaf, *states, *m.parameters()], allow_unused=True)
    return [o.double() for o in outs], [None if g is None else g.double() for g in grads]


def _assert_close(got, want, names, atol, rtol):
    for name, u, v in zip(names, got, want, strict=True):
        if u is None or v is None:  # unused on one path: then zero on the other
            assert u is None and v is None or (u if v is None else v).abs().max() == 0, name
            continue
        torch.testing.assert_close(u, v, atol=atol, rtol=rtol, msg=name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=configs(),
    T=st.integers(1, 5),
    B=st.integers(1, 4),
    form=st.sampled_from(["dense", "packed", "lengths"]),
    with_state=st.booleans(),
    training=st.booleans(),
    use_ext=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fused_equals_loop_property(cfg, T, B, form, with_state, training, use_ext, seed):
    family, kw = cfg
    if use_ext:
        require_ext()
    torch.manual_seed(seed)
    a, b = _pair(family, kw, 3, 4, training, 0.6)
    data = torch.randn((B, T, 3) if kw["batch_first"] else (T, B, 3))
    lengths = _lengths(B, T)
    hx = None
    if with_state:
        hx = tuple(torch.randn(s, requires_grad=True) for s in a.state_shapes(B))
        hx = hx if len(hx) > 1 else hx[0]
    pure = pure_kernels() if not use_ext else contextlib.nullcontext()
    with pure:
        got = _run(a, data, form, lengths, hx, seed + 1)
    want = _run(b, data, form, lengths, hx, seed + 1)
    # batch norm in training: statistics of steps with few rows are ill-conditioned (docs/fused.md)
    tol = 1e-8 if kw.get("norm") == "batch" and training else 1e-10
    _assert_close(got[0], want[0], ["output", *(f"state{i}" for i in range(len(got[0]) - 1))], tol, tol)
    for (name, u), v in zip(a.named_buffers(), b.buffers()):  # batch norm's running statistics
        torch.testing.assert_close(u, v, atol=tol, rtol=tol, msg=name)
    n_states = len(hx) if isinstance(hx, tuple) else int(hx is not None)
    names = ["input", *(f"h0[{i}]" for i in range(n_states)), *(n for n, _ in a.named_parameters())]
    _assert_close(got[1], want[1], names, tol * 10, tol * 10)


@pytest.mark.parametrize("family", sorted(CELL_OPTIONS))
def test_every_listed_option_has_a_fused_kernel(family):
    """The strategy's options are the fused ones: a dropped kernel would make the property above
    skip (``assume``) instead of fail."""
    for opts in CELL_OPTIONS[family]:
        assert dispatch.fused_supported(CLASSES[family](3, 4, **opts)), opts


@pytest.mark.parametrize("family", sorted(CELL_OPTIONS))
def test_pure_kernels_pin_every_listed_option(family, monkeypatch):
    """Under ``pure_kernels()`` (the ``"pure"`` runs here, of the ``backend`` fixture and of
    test_properties.py's ``"fused-pure"``) no option reaches the compiled kernels, forward or
    backward: pinning ``rnnkit.kernels.backend`` alone left the variant kinds (GRU reset-before,
    MUT1-3, the LSTM's Greff layouts) on them, so their pure kernels went untested where the
    extension builds."""
    from rnnkit.kernels import ext

    def no_ext():
        raise AssertionError("the compiled kernels were asked for under pure_kernels()")

    for opts in CELL_OPTIONS[family] + ([{"proj_size": 2}] if family == "lstm" else []):
        m = CLASSES[family](3, 4, impl="fused", bidirectional=True, **opts)
        x = torch.randn(5, 2, 3, requires_grad=True)
        with pure_kernels(), monkeypatch.context() as mp:
            mp.setattr(ext, "ops", no_ext)
            out, _ = m(x)
            out.sum().backward()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=configs(),
    T=st.integers(1, 6),
    B=st.integers(1, 9),
    I=st.integers(1, 20),
    H=st.integers(1, 20),
    packed=st.booleans(),
    training=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_float32_kernels_equal_float64_loop_property(cfg, T, B, I, H, packed, training, seed):
    """The float32 kernels (their own code: inlined AVX-512/AVX2 activations, brgemm step GEMMs,
    oneDNN) at odd sizes against the float64 reference loop, to float32 rounding."""
    family, kw = cfg
    require_ext()
    kw = dict(kw, recurrent_dropout=0.0, zoneout=0.0, weight_drop=0.0, locked_dropout=0.0, dropout=0.0)
    if kw.get("norm"):  # a norm over 1-2 features (or a batch norm over 1-2 rows) is ill-conditioned:
        H = max(H, 8)  # float32 rounding, amplified by 1/std up to 316, is no kernel error
        if kw["norm"] == "batch" and training:
            B, packed = max(B, 6), False
    if kw.get("proj_size"):
        kw["proj_size"] = max(1, min(kw["proj_size"], H - 1)) if H > 1 else 0
    torch.manual_seed(seed)
    a, b = _pair(family, kw, I, H, training, 0.5, torch.float32)
    data, lengths = torch.randn((B, T, I) if kw["batch_first"] else (T, B, I)), _lengths(B, T)
    form = "packed" if packed else "dense"
    (oa, ga), (ob, gb) = _run(a, data, form, lengths, dtype=torch.float32), _run(b, data, form, lengths)
    names = ["input", *(n for n, _ in a.named_parameters())]
    for u, v in zip(oa, ob):
        torch.testing.assert_close(u, v, atol=2e-5, rtol=1e-4)
    for name, u, v in zip(names, ga, gb):
        torch.testing.assert_close(u, v, atol=1e-4 * max(1.0, v.abs().max().item()), rtol=1e-3, msg=name)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cfg=configs(),
    T=st.integers(2, 4),
    extra=st.integers(0, 9),
    H=st.integers(48, 160),
    packed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_threaded_kernels_equal_loop_property(cfg, T, extra, H, packed, seed):
    """Shapes where the compiled kernels split a step over two threads (row blocks from 8k
    values a step, column blocks from 2^20 multiply-adds; ragged edges of both) against the
    loop, float64. The batch is the smallest past both thresholds, plus ``extra`` rows."""
    family, kw = cfg
    require_ext()
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(seed)
        a, b = _pair(family, kw, 5, H, True, 0.3)
        G, P = a.weight_hh_l0.shape
        B = max(8192 // G, 2**20 // (G * P)) + 1 + extra
        data, lengths = torch.randn((B, T, 5) if kw["batch_first"] else (T, B, 5)), _lengths(B, T)
        form = "packed" if packed else "dense"
        (oa, ga), (ob, gb) = _run(a, data, form, lengths, seed=seed), _run(b, data, form, lengths, seed=seed)
        tol = 1e-8 if kw.get("norm") == "batch" else 1e-10
        _assert_close([*oa, *ga], [*ob, *gb], range(len(oa) + len(ga)), tol, tol)
    finally:
        torch.set_num_threads(old)


LSTM_NORMS = [{}, {"norm": "layer"}, {"norm": "batch", "max_len": 4}, {"peephole": True}]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    opts=st.sampled_from(LSTM_NORMS),
    H=st.integers(1, 70),
    B=st.integers(1, 40),
    T=st.integers(1, 12),
    I=st.integers(1, 9),
    threads=st.integers(1, 3),
    zoneout=st.tuples(st.sampled_from([0.0, 0.3]), st.sampled_from([0.0, 0.2, 0.5])),
    recurrent_dropout=st.sampled_from([0.0, 0.3]),
    layers=st.integers(1, 2),
    bidirectional=st.booleans(),
    proj=st.booleans(),
    packed=st.booleans(),
    training=st.sampled_from([True, True, False]),
    seed=st.integers(0, 2**16),
)
def test_float32_lstm_regularized_equals_float64_loop_property(
    opts, H, B, T, I, threads, zoneout, recurrent_dropout, layers, bidirectional, proj, packed, training, seed
):
    """The float32 LSTM kernels' own paths on AVX-512 (zoneout's training masks read as bits,
    blocks of 16 units with a partial last word; layer norm's one-pass row statistics and its
    row backward four rows at a time, with a tail; batch norm's column statistics and backward
    sums; the saved column-major h_{t-1}) on 1-3 threads, with recurrent dropout, projection and
    packed input, against the float64 loop under the same masks, to float32 rounding."""
    require_ext()
    kw = dict(opts, num_layers=layers, bidirectional=bidirectional, recurrent_dropout=recurrent_dropout)
    kw["zoneout"] = {"h": zoneout[0], "c": zoneout[1]} if zoneout[0] != zoneout[1] else zoneout[0]
    if kw.get("norm"):  # a norm over few features (or a batch norm over few rows) is ill-conditioned
        H = max(H, 8)  # (test_float32_kernels_equal_float64_loop_property above)
        if kw["norm"] == "batch" and training:
            B, packed = max(B, 6), False
    if proj and H > 1:
        kw["proj_size"] = 1 + seed % (H - 1)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        a, b = _pair("lstm", kw, I, H, training, 0.5, torch.float32)
        data, lengths = torch.randn(T, B, I), _lengths(B, T)
        hx = tuple(0.5 * torch.randn(s) for s in a.state_shapes(B))
        form = "packed" if packed else "dense"
        h32, h64 = tuple(h.float().requires_grad_() for h in hx), tuple(h.requires_grad_() for h in hx)
        # both calls draw their masks (zoneout, recurrent dropout) from the same seed
        oa, ga = _run(a, data, form, lengths, h32, seed, torch.float32)
        ob, gb = _run(b, data, form, lengths, h64, seed)
    finally:
        torch.set_num_threads(old)
    for name, u, v in zip(["output", "h_n", "c_n"], oa, ob, strict=True):
        torch.testing.assert_close(u, v, atol=2e-5, rtol=1e-4, msg=name)
    names = ["input", "h0", "c0", *(n for n, _ in a.named_parameters())]
    for name, u, v in zip(names, ga, gb, strict=True):
        if u is None or v is None:
            assert u is None and v is None, name
            continue
        torch.testing.assert_close(u, v, atol=1e-4 * max(1.0, v.abs().max().item()), rtol=1e-3, msg=name)
