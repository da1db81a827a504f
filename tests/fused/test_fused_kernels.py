"""The fused kernels themselves: extension vs pure PyTorch, masks, gradcheck, fallbacks.

``run_direction`` is checked against the reference loop (:mod:`rnnkit.loop`) directly on
packed time-major data, with the recurrent-dropout mask (which the loop applies through
``StepContext.recurrent_mask``), in both directions.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

import rnnkit
import rnnkit.kernels as K
from rnnkit.cells import GRUCellMath, LSTMCellMath, RNNCellMath, StepContext
from rnnkit.kernels import ext
from rnnkit.loop import run_direction as loop_direction

BATCH_SIZES = [4, 4, 3, 1, 1]  # packed: lengths 5, 3, 3, 1


def require_ext() -> None:
    """Skip where the extension cannot exist (no compiler, or disabled); else it must build."""
    if ext.disabled():
        pytest.skip("RNNKIT_NO_EXT is set")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler on this machine")
    ext._ensure_ninja_on_path()
    if shutil.which("ninja") is None:
        pytest.skip("ninja is not installed (pip install ninja)")
    assert ext.ops() is not None, "the C++ extension failed to build (see the rnnkit log warning)"


CELLS = {
    "lstm": lambda I, H: LSTMCellMath(I, H),
    "lstm_proj": lambda I, H: LSTMCellMath(I, H, proj_size=H - 1),
    "lstm_nobias": lambda I, H: LSTMCellMath(I, H, bias=False),
    "lstm_peep": lambda I, H: LSTMCellMath(I, H, peephole=True),
    "lstm_peep_proj": lambda I, H: LSTMCellMath(I, H, peephole=True, proj_size=H - 1, bias=False),
    "gru": lambda I, H: GRUCellMath(I, H),
    "gru_nobias": lambda I, H: GRUCellMath(I, H, bias=False),
    "rnn_tanh": lambda I, H: RNNCellMath(I, H),
    "rnn_relu": lambda I, H: RNNCellMath(I, H, nonlinearity="relu"),
}


def _setup(name, dtype=torch.float64, seed=0, I=3, H=5):
    torch.manual_seed(seed)
    cell = CELLS[name](I, H)
    p = {s.name: torch.empty(s.shape, dtype=dtype, requires_grad=True) for s in cell.param_specs()}
    cell.reset_parameters(p)
    if "weight_peephole" in p:  # initialized to zero: make the peepholes matter
        p["weight_peephole"].data.uniform_(-0.5, 0.5)
    x = torch.randn(sum(BATCH_SIZES), I, dtype=dtype, requires_grad=True)
    h0 = tuple(torch.randn(4, s, dtype=dtype, requires_grad=True) for s in cell.state_sizes())
    mask = torch.bernoulli(torch.full((4, cell.state_sizes()[0]), 0.7, dtype=dtype)) / 0.7
    return cell, p, x, h0, mask


def _run(fn, cell, p, x, h0, reverse, weights):
    out, state = fn(cell, p, cell.project_input(p, x), BATCH_SIZES, h0, reverse)
    res = [out, *state]
    loss = sum((r * w).sum() for r, w in zip(res, weights))
    grads = torch.autograd.grad(loss, [x, *h0, *p.values()])
    return [*res, *grads]


def _close(a, b, tol):
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", list(CELLS))
def test_kernels_match_loop_and_each_other(name, reverse, use_mask):
    """Pure kernels == loop (with the mask through the step context); ext == pure."""
    cell, p, x, h0, mask = _setup(name)
    m = mask if use_mask else None
    with torch.no_grad():
        out, state = loop_direction(cell, p, cell.project_input(p, x), BATCH_SIZES, h0, reverse)
    weights = [torch.randn_like(t) for t in (out, *state)]

    def loop(c, p_, xp, bs, h, rev):
        return loop_direction(c, p_, xp, bs, h, rev, StepContext(recurrent_mask=m))

    def pure(c, p_, xp, bs, h, rev):
        return K.run_direction(c, p_, xp, bs, h, rev, mask=m, use_ext=False)

    ref = _run(loop, cell, p, x, h0, reverse, weights)
    got = _run(pure, cell, p, x, h0, reverse, weights)
    _close(ref, got, 1e-12)
    if not (ext.disabled() or shutil.which(os.environ.get("CXX", "c++")) is None):
        require_ext()  # skips without ninja

        def compiled(c, p_, xp, bs, h, rev):
            return K.run_direction(c, p_, xp, bs, h, rev, mask=m, use_ext=True)

        got2 = _run(compiled, cell, p, x, h0, reverse, weights)
        _close(got, got2, 1e-13)


@pytest.mark.parametrize("name", ["lstm", "lstm_proj", "lstm_peep", "gru", "rnn_relu"])
def test_float32_onednn_path_matches_loop(name):
    """float32 runs the oneDNN GEMMs (where available): same results to float32 rounding."""
    cell, p, x, h0, mask = _setup(name, torch.float32)
    weights = None
    for use_ext in [False, True] if not ext.disabled() and ext.ops() is not None else [False]:
        with torch.no_grad():
            out, state = loop_direction(cell, p, cell.project_input(p, x), BATCH_SIZES, h0, True)
        weights = weights or [torch.randn_like(t) for t in (out, *state)]

        def loop(c, p_, xp, bs, h, rev):
            return loop_direction(c, p_, xp, bs, h, rev, StepContext(recurrent_mask=mask))

        def fused(c, p_, xp, bs, h, rev, use_ext=use_ext):
            return K.run_direction(c, p_, K.project_input(c, p_, x), bs, h, rev, mask=mask, use_ext=use_ext)

        ref, got = _run(loop, cell, p, x, h0, True, weights), _run(fused, cell, p, x, h0, True, weights)
        _close(ref, got, 2e-5)


@pytest.mark.parametrize("use_ext", [False, True])
@pytest.mark.parametrize("name", ["lstm", "lstm_proj", "lstm_peep", "gru", "rnn_tanh"])
def test_gradcheck(name, use_ext):
    if use_ext:
        require_ext()
    cell, p, x, h0, mask = _setup(name, I=2, H=3)  # tiny: gradcheck costs 2 runs per input
    names = list(p)

    def f(x, *rest):
        hs, ps = rest[: len(h0)], dict(zip(names, rest[len(h0) :]))
        xp = cell.project_input(ps, x)
        out, st = K.run_direction(cell, ps, xp, BATCH_SIZES, hs, True, mask=mask, use_ext=use_ext)
        return (out, *st)

    assert torch.autograd.gradcheck(f, (x, *h0, *p.values()))


@pytest.mark.parametrize("use_ext", [False, True])
@pytest.mark.parametrize("name", ["lstm_proj", "lstm_peep", "gru", "rnn_tanh"])
def test_gradcheck_zoneout(name, use_ext):
    """Zoneout with fractional weights (as in evaluation) exercises both gradient paths."""
    if use_ext:
        require_ext()
    cell, p, x, h0, mask = _setup(name, I=2, H=3)
    names = list(p)
    probs = (0.3, 0.6)[: len(h0)]

    def f(x, *rest):
        hs, ps = rest[: len(h0)], dict(zip(names, rest[len(h0) :]))
        xp = cell.project_input(ps, x)
        out, st = K.run_direction(
            cell, ps, xp, BATCH_SIZES, hs, False, mask=mask, use_ext=use_ext, zoneout=probs
        )
        return (out, *st)

    assert torch.autograd.gradcheck(f, (x, *h0, *p.values()))


def test_fused_rejects_unsupported_and_dispatches(monkeypatch):
    m = rnnkit.LSTM(3, 4, impl="fused")
    calls = []
    orig = K.run_layer_direction
    monkeypatch.setattr(K, "run_layer_direction", lambda *a, **k: calls.append(1) or orig(*a, **k))
    m(torch.randn(2, 1, 3))
    assert calls == [1]
    with pytest.raises(ValueError, match="impl='fused'"):
        rnnkit.LSTM(3, 4, impl="fused", norm="layer", coupled_gates=True)(torch.randn(2, 1, 3))
    with pytest.raises(ValueError, match="standard"):
        K.run_direction(object(), {}, torch.zeros(1, 4), [1], (torch.zeros(1, 1),))  # type: ignore[arg-type]


def test_build_failure_falls_back_to_pure(monkeypatch, caplog):
    """A failed compilation logs one warning, and the fused path runs the pure kernels."""
    monkeypatch.setattr(ext, "_state", {})
    monkeypatch.delenv("RNNKIT_NO_EXT", raising=False)

    def broken():
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(ext, "_build", broken)
    with caplog.at_level(logging.WARNING, logger="rnnkit"):
        assert ext.ops() is None
        assert K.backend(torch.zeros(1)) == "pure"
    assert "no compiler here" in caplog.text
    a = rnnkit.GRU(3, 4, impl="fused")
    torch.manual_seed(0)
    b = rnnkit.GRU(3, 4, impl="loop")
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(a(x)[0], b(x)[0], atol=1e-12, rtol=1e-12)


def test_no_ext_env_selects_pure_in_subprocess():
    """``RNNKIT_NO_EXT=1``: no build is attempted and results match the reference loop."""
    code = (
        "import torch, rnnkit, rnnkit.kernels as K\n"
        "from rnnkit.kernels import ext\n"
        "torch.set_default_dtype(torch.float64)\n"
        "assert ext.disabled() and ext.ops() is None and K.backend(torch.zeros(1)) == 'pure'\n"
        "ext._build = lambda: 1 / 0\n"
        "a = rnnkit.LSTM(3, 4, 2, impl='fused'); b = rnnkit.LSTM(3, 4, 2, impl='loop')\n"
        "b.load_state_dict(a.state_dict()); x = torch.randn(5, 2, 3)\n"
        "torch.testing.assert_close(a(x)[0], b(x)[0], atol=1e-12, rtol=1e-12)\n"
        "print('OK')\n"
    )
    env = dict(os.environ, RNNKIT_NO_EXT="1", PYTHONPATH=os.getcwd())
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr


def test_auto_picks_fused_for_cpu_float32_gru_rnn_and_packed_lstm(monkeypatch):
    monkeypatch.setattr(K, "backend", lambda x: "ext")  # as if compiled (selection only)
    from rnnkit import dispatch

    x = torch.randn(3, 2, 3, dtype=torch.float32)
    gru, lstm = rnnkit.GRU(3, 4, dtype=torch.float32), rnnkit.LSTM(3, 4, dtype=torch.float32)
    rnn = rnnkit.RNN(3, 4, nonlinearity="relu", dtype=torch.float32)
    assert dispatch.select(gru, x) == "fused" and dispatch.select(rnn, x) == "fused"
    assert dispatch.select(lstm, x) == "torch"  # torch's oneDNN LSTM is as fast or faster
    assert dispatch.select(lstm, x, packed=True) == "fused"  # torch's packed CPU LSTM is slow
    with torch.no_grad():  # inference too (benchmarks/inference.py)
        assert dispatch.select(lstm, x, packed=True) == "fused" and dispatch.select(lstm, x) == "torch"
        assert dispatch.select(gru, x) == "fused" and dispatch.select(rnn, x) == "fused"
    gru.requires_grad_(False)
    assert dispatch.select(gru, x) == "fused"
    assert dispatch.select(gru, x.double()) == "torch"  # float64: torch's kernels, the oracle's
    monkeypatch.setattr(K, "backend", lambda x: "pure")
    assert dispatch.select(rnn, x) == "torch"  # the pure kernels are not faster than torch


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize(("name", "packed"), [("GRU", False), ("RNN", True), ("LSTM", True)])
def test_auto_inference_on_the_fused_path_equals_torch(name, packed, ctx):
    """Inference that ``impl="auto"`` sends to the fused kernels (CPU float32 GRU/RNN, packed
    LSTM) runs there — under ``no_grad`` and ``inference_mode`` — and gives torch.nn's outputs
    and states to float32 rounding (bidirectional, 2 layers, batch_first, eval-mode dropout)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from rnnkit import dispatch

    require_ext()
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, batch_first=True, dropout=0.3, dtype=torch.float32)
    ours, ref = getattr(rnnkit, name)(5, 7, **kw).eval(), getattr(torch.nn, name)(5, 7, **kw).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 5, dtype=torch.float32)
    inp = pack_padded_sequence(x, torch.tensor([6, 4, 2]), batch_first=True) if packed else x
    with ctx():
        assert dispatch.select(ours, inp.data if packed else inp, packed=packed) == "fused"
        (ya, sa), (yb, sb) = ours(inp), ref(inp)
    states = list(zip(sa, sb)) if name == "LSTM" else [(sa, sb)]
    for u, v in [(ya.data if packed else ya, yb.data if packed else yb), *states]:
        torch.testing.assert_close(u, v, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("batch", "hidden", "batch_first"), [(32, 256, False), (64, 128, True), (32, 384, False)]
)
def test_auto_trains_padded_lstm_on_torch(batch, hidden, batch_first, monkeypatch):
    """Padded LSTM training stays on torch's oneDNN LSTM at every shape, the medium ones and the
    main job's (2x384, B=32) included: the fused path only won while torch faulted its workspace
    in every step (rnnkit/dispatch.py); packed input goes to the fused path."""
    monkeypatch.setattr(K, "backend", lambda x: "ext")  # as if compiled (selection only)
    from rnnkit import dispatch

    m = rnnkit.LSTM(3, hidden, batch_first=batch_first, dtype=torch.float32)
    x = torch.zeros((batch, 5, 3) if batch_first else (5, batch, 3), dtype=torch.float32)
    assert dispatch.select(m, x) == "torch"
    assert dispatch.select(m, x, packed=True) == "fused"


def test_packed_lstm_training_through_auto_equals_the_loop(monkeypatch):
    """The path ``impl="auto"`` now takes for packed CPU LSTM training (fused, asserted: on another
    path this compared the loop with itself or torch): same numbers."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from rnnkit import dispatch

    require_ext()
    taken, select = [], dispatch.select
    monkeypatch.setattr(dispatch, "select", lambda *a, **k: taken.append(select(*a, **k)) or taken[-1])
    torch.manual_seed(0)
    a = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float32)
    b = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=torch.float32, impl="loop")
    b.load_state_dict(a.state_dict())
    x = torch.randn(6, 3, 3, dtype=torch.float32)
    lengths = torch.tensor([4, 6, 2])
    outs = []
    for m in (a, b):
        y = pad_packed_sequence(m(pack_padded_sequence(x, lengths, enforce_sorted=False))[0])[0]
        y.square().sum().backward()
        outs.append((y, [p.grad for p in m.parameters()]))
    assert taken == ["fused", "loop"]
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    for ga, gb in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(ga, gb, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("opts", [{}, {"norm": "layer"}, {"zoneout": 0.3}], ids=["plain", "layer", "zoneout"])
def test_relu_gradient_passes_nan_outputs_like_torch(opts, backend):
    """torch's relu backward zeroes the gradient where the output is <= 0 and passes it
    elsewhere, at a NaN output too (``threshold_backward``); the fused kernels kept it only
    where ``h > 0``, so they zeroed it at NaN outputs: other parameter gradients than torch's
    (here ``weight_ih``'s finite column and the biases)."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2)
    x[-1, 1, 0] = float("nan")  # the last step of sequence 1: its whole h row is NaN
    grads = {}
    for impl in ("loop", "fused"):
        torch.manual_seed(1)
        m = rnnkit.RNN(2, 5, nonlinearity="relu", impl=impl, **opts).eval()
        out, h_n = m(x)
        grads[impl] = torch.autograd.grad(out.sum() + h_n.sum(), list(m.parameters()))
    for got, want in zip(grads["fused"], grads["loop"]):
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize(
    "opts",
    [{}, {"reset_after": False}, {"variant": "mut1"}, {"variant": "mut3"}, {"zoneout": 0.3}],
    ids=["gru", "reset_before", "mut1", "mut3", "zoneout"],
)
@pytest.mark.parametrize("inf", [float("inf"), -float("inf")])
def test_infinite_gru_state_gives_torchs_nans_in_float32(opts, inf, backend):
    """An infinite unit of ``h_0`` makes the recurrent pre-activations ±inf: σ(-inf) is exactly 0
    in ATen's float32 (and the loop's), so ``0 ⊙ inf`` makes the row NaN. The fused float32 σ gave
    3e-39 below -88.7 (its exp's clamp), so ``z ⊙ h`` kept the inf and other units stayed finite
    (a GRU's whole row frozen at its previous value): outputs where torch.nn's are NaN."""
    torch.manual_seed(0)
    x, h0 = torch.randn(4, 3, 2, dtype=torch.float32), torch.randn(1, 3, 5, dtype=torch.float32)
    h0[0, 1, 0] = inf
    outs = {}
    for impl in ("loop", "fused"):
        torch.manual_seed(1)
        m = rnnkit.GRU(2, 5, impl=impl, **opts).float().eval()
        outs[impl] = m(x, h0)
    if not opts:  # as torch.nn.GRU's: by the last step every unit of row 1 is NaN
        assert torch.isnan(outs["loop"][0][-1, 1]).all()
    for got, want in zip(outs["fused"], outs["loop"], strict=True):
        torch.testing.assert_close(got, want, equal_nan=True)
