"""Fused kernels of the normalized cells (layer norm, recurrent batch norm) against the
reference loop, which runs the cells' own step (``rnnkit.cells.norm``) one op at a time.

Float64, 2 layers, forward outputs, final states, every gradient (input, initial states,
weights, biases, norm gains and shifts) and the running statistics of batch norm after the
call, on both fused backends (compiled extension and pure PyTorch), dense and packed
(unsorted), one and two directions, with recurrent dropout and zoneout, in training and in
evaluation. Plus: dispatch, the fallback without the extension, threaded sizes and the
running-statistics update (the custom op itself: test_fused_norm_op.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
import rnnkit.kernels as K
from rnnkit import dispatch
from rnnkit.kernels import norm_in_kernel, norm_ops

FAMILIES = {
    "lstm_ln": (rnnkit.LSTM, {"norm": "layer"}),
    "lstm_ln_proj_nobias": (rnnkit.LSTM, {"norm": "layer", "proj_size": 2, "bias": False}),
    "lstm_bn": (rnnkit.LSTM, {"norm": "batch", "max_len": 3}),  # T = 5 > max_len: shared last slot
    "gru_ln": (rnnkit.GRU, {"norm": "layer"}),
    "rnn_ln_tanh": (rnnkit.RNN, {"norm": "layer"}),
    "rnn_ln_relu": (rnnkit.RNN, {"norm": "layer", "nonlinearity": "relu", "bias": False}),
}
REGS = [{}, {"recurrent_dropout": 0.3, "zoneout": 0.2}]


def _pair(family, reg, bidir, training):
    cls, kw = FAMILIES[family]
    torch.manual_seed(0)
    a = cls(3, 4, 2, bidirectional=bidir, impl="fused", **kw, **reg).train(training)
    b = cls(3, 4, 2, bidirectional=bidir, impl="loop", **kw, **reg).train(training)
    with torch.no_grad():  # gains 1 / shifts 0 at init would hide mistakes in their use
        for name, w in a.named_parameters():
            if "_ln_" in name or "_bn_" in name:
                w.uniform_(0.5, 1.5) if name.startswith("weight") else w.uniform_(-0.5, 0.5)
        for buf in a.buffers():
            buf.uniform_(0.2, 1.0)
    b.load_state_dict(a.state_dict())
    return a, b


def _outputs(m, x, seed):
    torch.manual_seed(seed)
    out, st = m(x)
    out = out.data if hasattr(out, "batch_sizes") else out
    return [out, *(st if isinstance(st, tuple) else (st,))]


# Every family in both layouts (dense + one direction, packed + two) and with and without the
# regularizers, in two combinations to stay fast; batch norm in training and evaluation.
CASES = [
    (f, reg, bidir, packed, training)
    for f in FAMILIES
    for reg, bidir, packed in ((REGS[0], False, True), (REGS[1], True, False))
    for training in ((True, False) if f == "lstm_bn" else (True,))
]
# evaluation, bidirectional and packed: zoneout's mean; batch norm's per-row slots in reverse
CASES += [(f, REGS[1], True, True, False) for f in FAMILIES]
# training, bidirectional and packed: the backward direction's rows appear over time, and the running
# statistics updated at each step are those of the longest sequence's slot (rnnkit.cells.norm.batch_norm)
CASES += [("lstm_bn", REGS[0], True, True, True)]


@pytest.mark.parametrize("family,reg,bidir,packed,training", CASES)
def test_fused_norm_equals_loop(backend, family, reg, bidir, packed, training):
    a, b = _pair(family, reg, bidir, training)
    assert dispatch.fused_supported(a)
    data = torch.randn(5, 3, 3)
    if packed:  # lengths unsorted: rows are permuted into packed order and back
        x = pack_padded_sequence(data, torch.tensor([2, 5, 3]), enforce_sorted=False)
        x.data.requires_grad_(True)
        leaf = x.data
    else:
        x = leaf = data.requires_grad_(True)
    h = torch.randn(4 if bidir else 2, 3, a.proj_size or 4, requires_grad=True)
    hx = (h, torch.randn(h.shape[0], 3, 4, requires_grad=True)) if a.cells[0].family == "lstm" else h
    calls = []
    orig, orig_in = norm_ops.forward_impl, norm_in_kernel.run_direction_input  # (the normalized LSTM
    norm_ops.forward_impl = lambda *args, **kw: calls.append(args[0]) or orig(*args, **kw)  # on the
    norm_in_kernel.run_direction_input = lambda *args, **kw: calls.append(1) or orig_in(*args, **kw)  # ext)
    try:
        ta, tb = _outputs(lambda v: a(v, hx), x, 7), _outputs(lambda v: b(v, hx), x, 7)
    finally:
        norm_ops.forward_impl, norm_in_kernel.run_direction_input = orig, orig_in
    assert len(calls) == 2 * (2 if bidir else 1)  # the fused path ran, once per layer-direction
    tol = 1e-8 if "bn" in family and training else 1e-10  # batch norm of 1-3 rows: ill-conditioned
    for u, v in zip(ta, tb):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)
    ws = [torch.randn_like(t) for t in ta]
    leaves = [leaf, *(hx if isinstance(hx, tuple) else (hx,))]
    ga = torch.autograd.grad(ta, [*leaves, *a.parameters()], ws)
    gb = torch.autograd.grad(tb, [*leaves, *b.parameters()], ws)
    assert len(ga) == len(leaves) + len(list(a.parameters()))
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)
    for (name, u), v in zip(a.named_buffers(), b.buffers()):  # running statistics, updated alike
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12, msg=name)
    if "bn" in family and training:
        fresh = _pair(family, reg, bidir, training)[0]
        assert not torch.equal(a.running_mean_hh_l0, fresh.running_mean_hh_l0)  # they did move


def test_backends_agree_and_gradients_flow_to_gains():
    """ext == pure (both run the same equations), and the gains' gradients are not zero."""
    from .test_fused_kernels import require_ext

    require_ext()
    res = []
    for be in ("ext", "pure"):
        torch.manual_seed(0)
        m = rnnkit.LSTM(3, 4, impl="fused", norm="layer", recurrent_dropout=0.2)
        x = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 3, 2]))
        orig = K.backend
        K.backend = (lambda v: "pure") if be == "pure" else orig
        try:
            torch.manual_seed(1)
            out = m(x)[0].data
            grads = torch.autograd.grad(out.pow(2).sum(), list(m.parameters()))
        finally:
            K.backend = orig
        res.append([out, *grads])
    for u, v in zip(*res):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)
    names = [n for n, _ in m.named_parameters()]
    assert all(g.abs().sum() > 0 for n, g in zip(names, res[0][1:]) if "_ln_" in n)


# -- dispatch and fallback ---------------------------------------------------------------------
def test_dispatch(monkeypatch):
    x = torch.zeros(2, 1, 3)
    for norm, kind in (("layer", "lstm_ln"), ("batch", "lstm_bn")):
        assert norm_ops.kind_of(rnnkit.LSTM(3, 4, norm=norm).cells[0]) == kind
    monkeypatch.setattr(K, "backend", lambda v: "ext")  # as if compiled: auto takes the fused path
    covered = (
        rnnkit.LSTM(3, 4, norm="batch"),
        rnnkit.LSTM(3, 4, norm="layer", peephole=True),
        rnnkit.LSTM(3, 4, norm="batch", peephole=True),
        rnnkit.GRU(3, 4, norm="layer"),
        rnnkit.RNN(3, 4, norm="layer"),
    )
    for m in covered:
        assert dispatch.select(m, x) == "fused"
    monkeypatch.setattr(K, "backend", lambda v: "pure")  # the pure kernels: auto keeps the loop
    assert dispatch.select(rnnkit.GRU(3, 4, norm="layer"), x) == "loop"
    unsupported = (
        rnnkit.LSTM(3, 4, norm="layer", coupled_gates=True),
        rnnkit.LSTM(3, 4, norm="batch", input_gate=False),
    )
    for m in unsupported:
        assert norm_ops.kind_of(m.cells[0]) is None
        with pytest.raises(ValueError, match="impl='fused'"):
            type(m)(3, 4, impl="fused", **{k: v for k, v in m.cells[0]._options.items()})(x)


def test_no_ext_env_falls_back_to_pure_in_subprocess():
    code = (
        "import torch, rnnkit, rnnkit.kernels as K\n"
        "from rnnkit.kernels import ext\n"
        "torch.set_default_dtype(torch.float64)\n"
        "assert ext.disabled() and ext.ops() is None and K.backend(torch.zeros(1)) == 'pure'\n"
        "ext._build = lambda: 1 / 0\n"
        "for kw in ({'norm': 'layer'}, {'norm': 'batch'}):\n"
        "    a = rnnkit.LSTM(3, 4, 2, impl='fused', **kw); b = rnnkit.LSTM(3, 4, 2, impl='loop', **kw)\n"
        "    b.load_state_dict(a.state_dict()); x = torch.randn(5, 2, 3)\n"
        "    torch.testing.assert_close(a(x)[0], b(x)[0], atol=1e-10, rtol=1e-10)\n"
        "    torch.testing.assert_close(a.running_mean_hh_l1 if kw['norm'] == 'batch' else x,\n"
        "                               b.running_mean_hh_l1 if kw['norm'] == 'batch' else x)\n"
        "print('OK')\n"
    )
    env = dict(os.environ, RNNKIT_NO_EXT="1", PYTHONPATH=os.getcwd())
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr


@pytest.mark.parametrize(
    "cls,kw",
    [
        (rnnkit.LSTM, {"norm": "layer", "proj_size": 24}),
        (rnnkit.LSTM, {"norm": "batch", "recurrent_dropout": 0.2}),
        (rnnkit.GRU, {"norm": "layer"}),
        (rnnkit.RNN, {"norm": "layer", "zoneout": 0.1}),
    ],
)
@pytest.mark.parametrize("hidden", [48, 45])
def test_float32_threaded_sizes_equal_loop(cls, kw, hidden, num_threads):
    """float32 (the step GEMMs on brgemm with W^T, made per call) at a size where the threads
    split the batch rows (layer norm) or share each step's statistics (batch norm), against the
    loop; 45 hidden units leave 4 H % 8 and H % 8 columns to the vector loops' tails."""
    from .test_fused_kernels import require_ext

    require_ext()
    num_threads(2)
    torch.manual_seed(0)
    a = cls(16, hidden, 2, impl="fused", dtype=torch.float32, **kw)
    b = cls(16, hidden, 2, impl="loop", dtype=torch.float32, **kw)
    b.load_state_dict(a.state_dict())
    x = torch.randn(7, 64, 16, dtype=torch.float32, requires_grad=True)
    ys, gs = [], []
    for m in (a, b):
        torch.manual_seed(1)  # the same masks
        y = m(x)[0]
        ys.append(y)
        gs.append(torch.autograd.grad(y.square().sum(), [x, *m.parameters()]))
    torch.testing.assert_close(ys[0], ys[1], atol=2e-5, rtol=2e-4)
    for g0, g1 in zip(gs[0], gs[1], strict=True):
        torch.testing.assert_close(g0, g1, atol=5e-4, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ns,slots", [([4, 4, 4], 8), ([4, 3, 1, 1, 1], 3), ([1, 1], 1), ([2, 1], 5)])
def test_update_running_ext_equals_pytorch(dtype, ns, slots):
    """csrc/norm_input.cpp's update_running = norm_input.py's PyTorch expression (steps past the
    last slot update it in turn; a step of one row leaves the variance alone), for the groups of
    a direction in one call (two widths)."""
    from rnnkit.kernels import norm_input

    from .test_fused_kernels import require_ext

    require_ext()
    g = torch.Generator().manual_seed(0)
    widths = {"c": 6, "hh": 9}
    stats = [(grp, *(torch.rand(len(ns), f, generator=g, dtype=dtype) + 0.1 for _ in range(2)))
             for grp, f in widths.items()]  # fmt: skip
    start = {f"running_{s}_{grp}": torch.rand(slots, f, generator=g, dtype=dtype) + 0.5
             for grp, f in widths.items() for s in ("mean", "var")}  # fmt: skip
    res = []
    for be in ("ext", "pure"):
        p = {k: v.clone() for k, v in start.items()}
        orig = K.backend
        K.backend = (lambda v: "pure") if be == "pure" else orig
        try:
            norm_input.update_running_groups(p, stats, ns[::-1], reverse=True)
        finally:
            K.backend = orig
        res.append(p)
    for k in start:
        rtol = 1e-6 if dtype == torch.float32 else 1e-14
        torch.testing.assert_close(res[0][k], res[1][k], rtol=rtol, atol=0)
        assert torch.equal(res[0][k], start[k]) == (k.startswith("running_var") and max(ns) == 1)


def test_update_running_lists_of_one_length():
    from .test_fused_kernels import require_ext

    require_ext()
    t = torch.ones(2, 3)
    msg = "rm, rv, mean and var must be lists of one length, got 2, 1, 1 and 1"
    with pytest.raises(RuntimeError, match=msg):
        torch.ops.rnnkit_norm.update_running([t, t.clone()], [t.clone()], [t], [t], [4, 4], 0.1)


def test_update_running_checks_every_group_before_updating_any():
    # a bad later group is an error that leaves the earlier groups' running statistics as they
    # were: the call updates all of a direction's groups or none
    from .test_fused_kernels import require_ext

    require_ext()
    rm, rv = [torch.zeros(3, 5), torch.zeros(3, 7)], [torch.ones(3, 5), torch.ones(3, 8)]
    before = [t.clone() for t in rm + rv]
    stats = [[torch.rand(4, 5), torch.rand(4, 7)] for _ in range(2)]
    with pytest.raises(RuntimeError, match=r"rv must have shape \(S, F\) = \[3, 7\], got \[3, 8\]"):
        torch.ops.rnnkit_norm.update_running(rm, rv, *stats, [4, 4, 3, 2], 0.1)
    for u, v in zip(rm + rv, before, strict=True):
        assert torch.equal(u, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("frozen", [("weight_ih_l0",), ("weight_ih_l0", "bias_ih_l0"), "all"])
@pytest.mark.parametrize("impl", ["auto", "fused"])
def test_layer_norm_lstm_backward_with_frozen_input_projection(dtype, frozen, impl):
    # neither x nor W_ih needs a gradient: the input group's layer-norm backward returns no d a,
    # and the kernel must skip dx / dW_ih instead of crashing (only hx or other weights train)
    torch.manual_seed(0)
    a = rnnkit.LSTM(3, 4, norm="layer", impl=impl, dtype=dtype)
    b = rnnkit.LSTM(3, 4, norm="layer", impl="loop", dtype=dtype)
    b.load_state_dict(a.state_dict())
    x = torch.randn(5, 2, 3, dtype=dtype)  # data: no gradient
    hx = [torch.randn(1, 2, 4, dtype=dtype) for _ in range(2)]
    grads = []
    for m in (a, b):
        for name, w in m.named_parameters():
            w.requires_grad_(frozen != "all" and name not in frozen)
        h0, c0 = (t.clone().requires_grad_() for t in hx)
        out, (hn, cn) = m(x, (h0, c0))
        (out.sum() + hn.sum() + cn.sum()).backward()
        trained = [w for w in m.parameters() if w.requires_grad]
        grads.append([out, h0.grad, c0.grad, *(w.grad for w in trained)])
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    for u, v in zip(*grads, strict=True):
        torch.testing.assert_close(u, v, **tol)


@pytest.mark.parametrize(
    "peephole,reg,bidir,packed,grad",
    [
        (False, {}, False, False, True),
        (True, REGS[1], True, True, True),
        (False, REGS[1], False, True, False),  # inference: nothing saved, step-sized scratch
        (True, {}, True, False, False),
    ],
)
def test_batch_norm_training_on_threads_equals_loop(peephole, reg, bidir, packed, grad):
    """Batch norm in training at a step worth two threads (2^20 multiply-adds: the step GEMM
    split by columns, each block's column statistics on its thread, the row passes split by
    rows, forward and backward) against the loop, float64, with the options the threaded
    property test draws too rarely: peepholes, recurrent dropout, zoneout, packed, inference."""
    from .test_fused_kernels import require_ext

    require_ext()
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        kw = dict(bidirectional=bidir, norm="batch", peephole=peephole, max_len=4, **reg)
        a, b = (rnnkit.LSTM(5, 128, impl=impl, **kw) for impl in ("fused", "loop"))
        with torch.no_grad():
            for name, w in a.named_parameters():
                if "_bn_" in name or "peephole" in name:
                    w.uniform_(0.5, 1.5)
        b.load_state_dict(a.state_dict())
        x = torch.randn(6, 17, 5, requires_grad=grad)
        lengths = torch.tensor([6, 6, 5, 5, 4, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1])
        res = []
        for m in (a, b):
            with torch.set_grad_enabled(grad):
                inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
                vals = _outputs(m, inp, seed=1)
                if grad:
                    loss = (vals[0] ** 2).sum() + vals[1].sum() + vals[2].sum()
                    vals += list(torch.autograd.grad(loss, [x, *m.parameters()]))
            res.append(vals + [buf.clone() for buf in m.buffers()])
        for u, v in zip(*res):  # steps of one row: 1/std up to 316 amplifies the rounding
            torch.testing.assert_close(u, v, rtol=1e-7, atol=1e-8)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_norm_inf_input_gives_nan_variance_as_loop(dtype):
    """An inf among a step's inputs makes its columns' variance NaN (inf - inf): the compiled
    statistics (norm_avx512.h's finish_moments too) must keep it NaN, as the loop does, in the
    outputs and the running variance, not clamp it to 0."""
    torch.manual_seed(0)
    a = rnnkit.LSTM(3, 16, impl="fused", norm="batch", dtype=dtype)
    b = rnnkit.LSTM(3, 16, impl="loop", norm="batch", dtype=dtype)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 5, 3, dtype=dtype)
    x[0, 2, 1] = float("inf")
    res = [[*_outputs(m, x, seed=1), *(buf.clone() for buf in m.buffers())] for m in (a, b)]
    for u, v in zip(*res, strict=True):
        torch.testing.assert_close(u, v, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gru_ln_infinite_state_equals_loop(backend, dtype):
    """The layer-norm GRU updates h = (h_{t-1} - n) z + n on the fused path as on the loop (as
    torch's GRUCell), not lerp(n, h_{t-1}, z). An infinite h_{t-1} makes its row's W_hh h_{t-1}
    infinite, and the layer norm of that row NaN on both; rows of large finite values (1e15, the
    norm takes them back to gates of order 1) and of ordinary ones agree to rounding."""
    a, b = _pair("gru_ln", {}, False, True)
    a, b = a.to(dtype), b.to(dtype)
    with torch.no_grad():
        x, h0 = torch.randn(5, 3, 3, dtype=dtype), torch.randn(2, 3, 4, dtype=dtype)
        h0[0, 0, 1], h0[0, 1, 2], h0[1, 2, 0] = float("inf"), 1e15, float("-inf")
        (ref, ref_hn), (out, hn) = b(x, h0), a(x, h0)
    assert ref.isnan().any() and ref[:, 1].isfinite().all()  # the inf's row NaN, the 1e15's finite
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol, equal_nan=True)
    torch.testing.assert_close(hn, ref_hn, atol=tol, rtol=tol, equal_nan=True)
