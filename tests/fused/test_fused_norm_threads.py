"""The compiled normalized kernels on two threads against the pure-PyTorch twin (float64),
with and without the tensors saved for backward.

``csrc/norm.cpp`` / ``norm_bwd.cpp`` use the threads once a step is big enough
(``norm_kernels.h``: >= 8192 values per step): layer norm and batch norm's evaluation give
each thread a block of batch rows for the whole loop (``over_steps``); the batch-norm LSTM in
training keeps them as a team that meets at each step's statistics (``norm_team.h``), the GRU
and RNN kernels' batch-norm mode splits each step's rows and its GEMMs' column blocks (>= 2^20
multiply-adds). The shapes here
pass the thresholds, and the batch shrinks over the steps (packed), so a race on a row, on a
per-thread accumulator of the gain/shift gradients or on a column block, or a row block
reading another's rows, would show up as a mismatch at float64 precision.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from rnnkit.kernels import norm as pure
from rnnkit.kernels import norm_input, norm_ops

BS = [40, 40, 33, 21]  # packed batch sizes: B = 40, shrinking


def _args(kind: str, mode: int, H: int, P: int | None = None, peep: bool = False):
    """The op's arguments; ``P``: an LSTM with ``proj_size=P`` (h has P features, c has H);
    ``peep``: with peepholes."""
    N, B = sum(BS), BS[0]
    P = P or H
    G = {"lstm": 4 * H, "gru": 3 * H}.get(kind, H)
    lstm = kind == "lstm"
    g = torch.Generator().manual_seed(1)

    def t(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    def u(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    st_hh = st_c = None
    if mode == 3:
        st_hh = torch.stack([t(N, G), u(N, G) + 0.5])
        st_c = torch.stack([t(N, H), u(N, H) + 0.5]) if lstm else None
    return [
        t(N, G), t(B, P), t(B, H) if lstm else None, t(G, P, scale=P**-0.5), t(G) if kind == "gru" else None,
        t(P, H, scale=H**-0.5) if P != H else None, (u(B, P) > 0.25).double() / 0.75, u(N, P) * 0.3,
        u(N, H) * 0.3 if lstm else None,
        u(G) + 0.5, t(G) if mode == 1 else None, u(H) + 0.5 if lstm else None, t(H) if lstm else None,
        st_hh, st_c, t(3 * H, scale=0.5) if peep else None,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "kind,mode,H,P",
    [
        ("lstm", 1, 96, None),
        ("lstm", 1, 96, "peephole"),
        ("lstm", 2, 96, "peephole"),
        ("lstm", 3, 96, "peephole"),
        ("lstm", 1, 96, 40),  # proj_size: the projection GEMM on each thread's rows too
        ("lstm", 2, 96, 40),
        ("lstm", 2, 96, None),
        ("lstm", 3, 96, None),
        ("lstm", 2, 100, None),
        ("lstm", 3, 100, None),
        ("gru", 1, 96, None),
        ("rnn_tanh", 1, 256, None),
    ],
)
def test_two_threads_equal_pure(kind, mode, H, P, two_threads):
    from .test_fused_kernels import require_ext

    require_ext()
    peep = P == "peephole"
    args = _args(kind, mode, H, None if peep else P, peep)
    ext = norm_ops.forward_impl(kind, mode, True, False, *args, BS, True)
    ref = norm_ops.forward_impl(kind, mode, False, False, *args, BS, True)
    for a, b in zip(ext, ref):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)
    # inference: nothing saved for backward (step-sized scratch, not returned), the same outputs
    lean = norm_ops.forward_impl(kind, mode, True, False, *args, BS, True, save=False)
    for a, b in zip(lean, ref[:7]):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)
    assert len(lean) == 7 < len(ext)
    lstm = kind == "lstm"
    g = torch.Generator().manual_seed(2)
    gout = torch.randn(ext[0].shape, generator=g, dtype=torch.float64)
    ghn = torch.randn(args[1].shape, generator=g, dtype=torch.float64)
    gcn = torch.randn(args[2].shape, generator=g, dtype=torch.float64) if lstm else gout.new_empty(0)
    xp, h0, c0, w_hh, b_hh, w_hr, mask, zh, zc, g_hh, s_hh, g_c, s_c, st_hh, st_c, w_peep = args
    common = (gout, ghn, gcn, ext[0], ext[7:], w_hh, b_hh is not None, w_hr, mask, zh, zc, g_hh)
    tail = (s_hh is not None, g_c, s_c is not None, st_hh, st_c, w_peep)
    d_ref = pure.backward(kind, mode, *common, *tail, tuple(BS), True)
    for _ in range(3):  # a race need not show every time
        d_ext = torch.ops.rnnkit_norm.backward(kind, mode, *common, *tail, BS, True, False)
        for a, b in zip(d_ext, d_ref):
            if b is None:
                assert a.numel() == 0
            else:
                torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-11)


def test_batch_norm_input_two_threads(num_threads):
    """The input group's batch norm (``csrc/norm_input.cpp``, steps in parallel) against its
    PyTorch expression with autograd: outputs, statistics and every gradient."""
    from .test_fused_kernels import require_ext

    require_ext()
    g = torch.Generator().manual_seed(3)
    N, G = sum(BS), 384
    a = torch.randn(N, G, generator=g, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(G, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    b = torch.randn(G, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(N, G, generator=g, dtype=torch.float64)
    ys, means, vars_ = [], [], []
    for r in torch.split(a, BS):  # the paper's equations, step by step
        var, mean = torch.var_mean(r, 0, correction=0)
        ys.append((r - mean) / torch.sqrt(var + 1e-5) * w + b)
        means.append(mean)
        vars_.append(var)
    ref = torch.autograd.grad(torch.cat(ys), [a, w, b], dy)
    num_threads(2)
    y, mean, var = norm_input.BNInput.apply(a, w, b, BS)
    torch.testing.assert_close(y, torch.cat(ys), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(mean, torch.stack(means), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(var, torch.stack(vars_), atol=1e-12, rtol=1e-12)
    for _ in range(3):
        got = torch.autograd.grad(y, [a, w, b], dy, retain_graph=True)
        for u, v in zip(got, ref):
            torch.testing.assert_close(u, v, atol=1e-11, rtol=1e-11)
    # without a gradient wanted, x^ is not kept (a scratch row per thread) and nothing else changes
    lean = torch.ops.rnnkit_norm.bn_input_forward(a.detach(), w.detach(), b.detach(), BS, False)
    assert lean[1].numel() == 0
    for u, v in zip([lean[0], lean[2], lean[3]], [y, mean, var], strict=True):
        torch.testing.assert_close(u, v, atol=0, rtol=0)


DEFAULT_THREADS = """
import torch, rnnkit
assert torch.get_num_threads() >= 2
torch.manual_seed(0)
a = rnnkit.LSTM(32, 64, norm="batch", impl="fused").double()
b = rnnkit.LSTM(32, 64, norm="batch", impl="loop").double()
b.load_state_dict(a.state_dict())
x = torch.randn(64, 8, 32, dtype=torch.float64)  # 64 steps of 8 x 256: the input group in parallel
for m in (a, b):
    y, _ = m(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
for (name, p), q in zip(a.named_parameters(), b.parameters()):
    torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=1e-9, msg=name)
print("ok")
"""


def test_batch_norm_training_with_default_threads():
    """Regression: with torch's thread count never set (the default), ATen reports one thread
    inside a parallel region, and the input group's batch-norm backward sized a per-thread
    accumulator by that: the second thread wrote past it (heap corruption, wrong gradients of
    the input gain). A fresh interpreter, as users run it."""
    from .test_fused_kernels import require_ext

    require_ext()
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores for two threads")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    r = subprocess.run(
        [sys.executable, "-c", DEFAULT_THREADS], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("grad", [True, False])
def test_layer_norm_input_group_chunks_on_row_blocks(threads, grad, num_threads):
    """The layer-norm LSTM's in-kernel input group, dense input (``csrc/norm.cpp``): each thread
    gathers its rows of a chunk of 8 steps into one GEMM, then copies ``a`` to its saved rows
    (training) or keeps it in the chunk's scratch (inference). Two threads split the 40 rows (40 x
    256 values a step); 19 steps end in a ragged chunk; the reverse direction walks the chunks
    backwards. Against the loop, float64."""
    from .test_fused_kernels import require_ext

    require_ext()
    import rnnkit

    num_threads(threads)
    torch.manual_seed(0)
    a = rnnkit.LSTM(5, 64, norm="layer", bidirectional=True, impl="fused")
    b = rnnkit.LSTM(5, 64, norm="layer", bidirectional=True, impl="loop")
    b.load_state_dict(a.state_dict())
    x = torch.randn(19, 40, 5, requires_grad=grad)
    res = []
    for m in (a, b):
        with torch.set_grad_enabled(grad):
            out, (h, c) = m(x)
        res.append([out, h, c])
        if grad:
            loss = (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum() + c.sum()
            res[-1] += torch.autograd.grad(loss, [x, *m.parameters()])
    for u, v in zip(*res, strict=True):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)
