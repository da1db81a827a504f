"""Property tests of the layers' invariants, for every cell option of the zoo and every impl.

Each property compares a layer with itself (or a copy with the same weights) under two input
forms that must compute the same: packed input, ``lengths=`` and each sequence alone;
``batch_first`` and time-major; unbatched and a batch of one; a sequence in two pieces with the
state carried and one call. tests/test_properties_impls.py has the others (the impls, a
``state_dict`` round trip, the step APIs). Float64, small shapes, derandomized (tests/conftest.py).
"""

from __future__ import annotations

import contextlib

import torch
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence, pad_sequence

import rnnkit
from rnnkit import dispatch

from .conftest import pure_kernels
from .fused.test_fused_property import CELL_OPTIONS

# every cell option alone (the fused property tests' list) and in a few combinations the papers allow
OPTIONS = {
    "lstm": CELL_OPTIONS["lstm"]
    + [
        {"full_gate_recurrence": True, "peephole": True, "coupled_gates": True},
        {"coupled_gates": True, "output_gate": False, "peephole": True},
        {"input_gate": False, "forget_gate": False, "output_gate": False},
        # no fused kernel (a normalized cell with a Greff ablation): impl="fused" refuses them
        {"norm": "layer", "input_gate": False, "peephole": True},
        {"norm": "batch", "max_len": 3, "coupled_gates": True, "output_activation": False},
    ],
    # (reset_after=False with norm="layer" is refused, by design)
    "gru": CELL_OPTIONS["gru"]
    + [{"variant": "mut1", "reset_after": False}, {"variant": "mut3", "reset_after": False}],
    "rnn": CELL_OPTIONS["rnn"],
}
CLASSES = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}
# "fused-pure": the fused path on its pure-PyTorch kernels (the compiled ones are "fused")
IMPLS = ["auto", "fused", "loop", "fused-pure"]
TOL = dict(atol=1e-10, rtol=1e-10)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw, bidirectional=True):
    """``(family, options)``: sizes, a cell option, stacking, direction, layout and projection."""
    family = draw(st.sampled_from(sorted(OPTIONS)))
    kw = dict(draw(st.sampled_from(OPTIONS[family])))
    kw.update(input_size=draw(st.integers(1, 4)), hidden_size=draw(st.integers(1, 5)))
    if family == "lstm" and kw["hidden_size"] > 1 and draw(st.booleans()):
        kw["proj_size"] = draw(st.integers(1, kw["hidden_size"] - 1))
    kw.update(
        num_layers=draw(st.integers(1, 2)),
        bidirectional=bidirectional and draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bias="forget_bias" in kw or draw(st.booleans()),  # forget_bias initializes a bias
    )
    if draw(st.booleans()):  # regularizers, in evaluation (see build): zoneout's expectation
        kw.update(zoneout=draw(st.sampled_from([0.3, (0.2, 0.5) if family == "lstm" else 0.5])))
        kw.update(recurrent_dropout=0.2, weight_drop=0.3, dropout=0.4 if kw["num_layers"] > 1 else 0.0)
    return family, kw


def build(family: str, kw: dict, impl: str, seed: int, training: bool = False):
    """The layer with every parameter and batch norm's running statistics away from their initial
    values (a zero peephole or a unit gain would hide a mistake), the same for the same seed; in
    training mode if ``training``, except with regularizers: their masks are random draws in
    training, so only their evaluation semantics (zoneout's expectation) can meet an invariant."""
    if impl.startswith("fused") and not dispatch.fused_supported(CLASSES[family](**kw)):
        reject()  # impl="fused" refuses it by design (when built); the other impls run it
    torch.manual_seed(seed)
    m = CLASSES[family](impl=impl.removesuffix("-pure"), **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.6, 0.6)
        for name, b in m.named_buffers():
            b.copy_(torch.rand_like(b) + 0.5 if "var" in name else torch.randn_like(b))
    return m.train(training and not (m._regularized() or m.dropout))


def backend(impl: str):
    """The fused backend of ``impl``: pinned to the pure kernels for ``"fused-pure"``."""
    if impl == "fused-pure":
        return pure_kernels()
    return contextlib.nullcontext()


def as_tuple(s) -> tuple:
    return s if isinstance(s, tuple) else (s,)


def as_hx(s: tuple):
    return s if len(s) > 1 else s[0]


def random_state(m, B: int | None) -> tuple:
    return tuple(torch.randn(s) for s in m.state_shapes(B))


def close(got, want, **tol) -> None:
    for u, v in zip(as_tuple(got), as_tuple(want), strict=True):
        torch.testing.assert_close(u, v, **(tol or TOL))


def is_batch_norm(kw: dict) -> bool:
    return kw.get("norm") == "batch"


@settings(SETTINGS, max_examples=1000)  # bidirectional batch norm on unequal lengths is ~1 in 200
@given(
    cfg=configs(),
    impl=st.sampled_from(IMPLS),
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    training=st.booleans(),
    step=st.integers(0, 4),
)
def test_packed_equals_each_sequence_alone_and_lengths(cfg, impl, lengths, training, step):
    """A packed batch (unsorted) gives each sequence what it gives alone, outputs and final
    states, and ``lengths=`` on the padded batch gives the packed call's outputs (zeros past each
    length), final states and running statistics. Batch norm in training is left out of the
    first: its statistics are those of the step's rows, which couple the sequences by design.
    ``step`` (unidirectional layers) is the sequences' first time index, for all forms alike."""
    family, kw = cfg
    step = 0 if kw["bidirectional"] else step
    m = build(family, kw, impl, len(lengths), training)
    by_lengths = build(family, kw, impl, len(lengths), training)
    B, T, bf = len(lengths), max(lengths), kw["batch_first"]
    seqs = [torch.randn(n, kw["input_size"]) for n in lengths]
    h0 = random_state(m, B)
    with backend(impl), torch.no_grad():
        out, final = m(pack_sequence(seqs, enforce_sorted=False), as_hx(h0), step=step)
        padded, _ = pad_packed_sequence(out, total_length=T)
        x = pad_sequence(seqs, batch_first=bf)
        y, final_len = by_lengths(x, as_hx(h0), lengths=torch.tensor(lengths), step=step)
        close(y.transpose(0, 1) if bf else y, padded)
        close(final_len, final)
        close(tuple(by_lengths.buffers()), tuple(m.buffers()))
        if m.training and is_batch_norm(kw):
            return
        for b, s in enumerate(seqs):
            y, fin = m(s.unsqueeze(0 if bf else 1), as_hx(tuple(h[:, b : b + 1] for h in h0)), step=step)
            close(padded[: lengths[b], b], y.squeeze(0 if bf else 1))
            assert not padded[lengths[b] :, b].any()
            close(tuple(f[:, b : b + 1] for f in as_tuple(final)), fin)


@SETTINGS
@given(
    cfg=configs(),
    impl=st.sampled_from(IMPLS),
    T=st.integers(1, 5),
    B=st.integers(1, 3),
    training=st.booleans(),
    step=st.integers(0, 4),
    with_state=st.booleans(),
)
def test_batch_first_equals_time_major_and_unbatched_equals_batch_of_one(
    cfg, impl, T, B, training, step, with_state
):
    """``batch_first=True`` on ``x.transpose(0, 1)`` is the time-major layer on ``x``, and an
    unbatched ``(L, H_in)`` input (whatever ``batch_first``) is a batch of one; with or without
    an initial state (``hx=None``: zeros), at any ``step`` (unidirectional layers)."""
    family, kw = cfg
    step = 0 if kw["bidirectional"] else step
    tm = build(family, dict(kw, batch_first=False), impl, T, training)
    bf = build(family, dict(kw, batch_first=True), impl, T, training)
    x, h0 = torch.randn(T, B, kw["input_size"]), random_state(tm, B)
    if not with_state:
        h0 = tuple(torch.zeros_like(h) for h in h0)
    hx = as_hx(h0) if with_state else None
    with backend(impl), torch.no_grad():
        y, fin = tm(x, hx, step=step)
        y_bf, fin_bf = bf(x.transpose(0, 1), hx, step=step)
        close(y_bf.transpose(0, 1), y)
        close(fin_bf, fin)
        close(tuple(bf.buffers()), tuple(tm.buffers()))  # batch norm's running statistics
        for m in (tm, bf):
            u, s = m(x[:, 0], as_hx(tuple(h[:, 0] for h in h0)) if with_state else None, step=step)
            one, s1 = m(
                x[:, :1].transpose(0, 1) if m.batch_first else x[:, :1],
                as_hx(tuple(h[:, :1] for h in h0)),
                step=step,
            )
            close(u, one.squeeze(0 if m.batch_first else 1))
            close(s, tuple(v.squeeze(1) for v in as_tuple(s1)))


@SETTINGS
@given(
    cfg=configs(bidirectional=False),
    impl=st.sampled_from(IMPLS),
    T=st.integers(2, 6),
    cut=st.integers(1, 5),
    B=st.integers(0, 3),
    training=st.booleans(),
)
def test_two_pieces_with_state_carried_equal_one_call(cfg, impl, T, cut, B, training):
    """A sequence fed as ``x[:k]`` then ``x[k:]`` with the state carried (and ``step=k``, batch
    norm's statistics slot) gives one call's outputs, final state and running statistics: in
    training too, since a dense batch's step-``t`` statistics are those of its own rows.
    Unidirectional only: a backward direction reads the sequence from its end. ``B=0``:
    unbatched."""
    family, kw = cfg
    k = min(cut, T - 1)
    whole = build(family, kw, impl, T, training)
    parts = build(family, kw, impl, T, training)
    bf = kw["batch_first"] and B > 0  # time-major: unbatched input, whatever batch_first says
    I = kw["input_size"]
    x = torch.randn((T, I) if B == 0 else (B, T, I) if bf else (T, B, I))
    h0 = random_state(whole, B or None)
    first, second = (x[:, :k], x[:, k:]) if bf else (x[:k], x[k:])
    with backend(impl), torch.no_grad():
        y, fin = whole(x, as_hx(h0))
        y1, mid = parts(first, as_hx(h0))
        y2, fin2 = parts(second, mid, step=k)
    tol = dict(atol=1e-8, rtol=1e-8) if training and is_batch_norm(kw) else TOL
    close(torch.cat([y1, y2], 1 if bf else 0), y, **tol)
    close(fin2, fin, **tol)
    close(tuple(parts.buffers()), tuple(whole.buffers()), **tol)
