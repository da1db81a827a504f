"""The normalized LSTM's input group computed inside the compiled kernel (layer norm; batch
norm in training): against the loop and the input group computed outside, on one and two
threads, and its layer-norm backward op against torch's."""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
import rnnkit.kernels as K
from rnnkit.kernels import norm_in_kernel


@pytest.mark.parametrize("norm", ["layer", "batch"])
@pytest.mark.parametrize("in_kernel", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_normalized_lstm_input_group_in_or_outside_the_kernel(monkeypatch, norm, in_kernel, packed):
    """The compiled layer-norm LSTM, and the batch-norm LSTM in training, compute their input
    group in the kernel when W_ih fits the cache (``INPUT_IN_KERNEL_MAX_BYTES``), else outside
    with autograd; both equal the loop (float64, training, peepholes, two layers,
    bidirectional, a ragged last chunk; batch norm: also its running statistics)."""
    from .test_fused_kernels import require_ext

    require_ext()
    calls = []
    orig = norm_in_kernel.run_direction_input
    spy = lambda *a, **k: calls.append(1) or orig(*a, **k)  # noqa: E731
    monkeypatch.setattr(norm_in_kernel, "run_direction_input", spy)
    if not in_kernel:
        monkeypatch.setattr(K, "INPUT_IN_KERNEL_MAX_BYTES", 0)
    torch.manual_seed(0)
    kw = {"norm": norm, "peephole": True, "num_layers": 2, "bidirectional": True, "zoneout": 0.1}
    a, b = rnnkit.LSTM(3, 4, impl="fused", **kw), rnnkit.LSTM(3, 4, impl="loop", **kw)
    with torch.no_grad():
        for p in a.parameters():
            p.uniform_(-0.6, 0.6)
    b.load_state_dict(a.state_dict())
    x = torch.randn(11, 3, 3, requires_grad=True)

    def run(m):
        inp = pack_padded_sequence(x, torch.tensor([11, 4, 9]), enforce_sorted=False) if packed else x
        torch.manual_seed(1)
        out, (h, c) = m(inp)
        out = out.data if packed else out
        loss = (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum() + c.sum()
        return [out, h, c, *torch.autograd.grad(loss, [x, *m.parameters()]), *m.buffers()]

    tol = 1e-8 if norm == "batch" else 1e-10  # batch norm of 1-3 rows: ill-conditioned
    for u, v in zip(run(a), run(b), strict=True):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)
    assert len(calls) == (4 if in_kernel else 0)  # 2 layers x 2 directions


@pytest.mark.parametrize("grad", [True, False])
def test_batch_norm_input_group_on_two_threads(num_threads, grad):
    """The batch-norm LSTM's in-kernel input group with the steps of a chunk on two threads
    (a step of ``B x 4H = 8192`` values): output, state, gradients and running statistics equal
    the loop's, with a ragged last chunk (11 = 8 + 3 steps) and in both directions; without a
    gradient too (the kernel then keeps no x̂ but still returns the statistics)."""
    from .test_fused_kernels import require_ext

    require_ext()
    num_threads(2)
    torch.manual_seed(0)
    kw = {"norm": "batch", "bidirectional": True}
    a, b = rnnkit.LSTM(5, 64, impl="fused", **kw), rnnkit.LSTM(5, 64, impl="loop", **kw)
    b.load_state_dict(a.state_dict())
    x = torch.randn(11, 32, 5, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        ra, rb = a(x), b(x)
    got, want = [ra[0], *ra[1], *a.buffers()], [rb[0], *rb[1], *b.buffers()]
    if grad:
        got += torch.autograd.grad(ra[0].square().sum(), [x, *a.parameters()])
        want += torch.autograd.grad(rb[0].square().sum(), [x, *b.parameters()])
    for u, v in zip(got, want, strict=True):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("G", [4, 37, 256])
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("N", [301, 302, 303])
def test_input_group_layer_norm_backward_equals_torchs(num_threads, dtype, G, shift, N):
    """``rnnkit_norm::ln_input_backward`` (the in-kernel input group's layer-norm backward, from
    the saved x̂ and 1/σ) against torch's layer-norm backward from the same rows: da, dγ, dβ, on
    two threads, vector widths with tails, and row counts that leave 1, 2 or 3 rows to the last
    group of four (NormB::rows)."""
    from .test_fused_kernels import require_ext

    require_ext()
    num_threads(2)
    g = torch.Generator().manual_seed(G)
    a, dy = (torch.randn(N, G, generator=g, dtype=dtype) * 3 + 1 for _ in range(2))
    w, b = torch.randn(G, generator=g, dtype=dtype), torch.randn(G, generator=g, dtype=dtype)
    mean, var = a.mean(1, keepdim=True), a.var(1, unbiased=False, keepdim=True)
    rs = torch.rsqrt(var + 1e-5)
    ln_backward = torch.ops.aten.native_layer_norm_backward
    want = ln_backward(dy, a, [G], mean, rs, w, b if shift else None, [True, True, shift])
    got = torch.ops.rnnkit_norm.ln_input_backward(dy, (a - mean) * rs, rs, w, shift)
    tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 2e-4, "rtol": 2e-4}
    for u, v in zip(got[: 3 if shift else 2], want[: 3 if shift else 2], strict=True):
        torch.testing.assert_close(u, v, **tol)
    assert shift or got[2].numel() == 0


@pytest.mark.parametrize("op", ["bn_input_forward", "bn_input_backward", "ln_input_backward"])
def test_input_group_ops_reject_zero_width(op):
    """G = 0 (no gate columns): bn_input_forward returned (N, 0) results, and both backward ops
    died of SIGFPE (an integer division by 2G), taking the process with them."""
    from .test_fused_kernels import require_ext

    require_ext()
    a, w, bsz = torch.randn(6, 0), torch.randn(0), [2, 2, 2]
    args = {
        "bn_input_forward": (a, w, None, bsz, True),
        "bn_input_backward": (a, a, torch.randn(3, 0), w, False, bsz),
        "ln_input_backward": (a, a, torch.randn(6, 1), w, False),
    }[op]
    name = "a" if op == "bn_input_forward" else "dy"
    msg = f"rnnkit_norm::{op}: {name} must have shape (N, G) with a positive width, got [6, 0]"
    with pytest.raises(RuntimeError, match=re.escape(msg)):
        getattr(torch.ops.rnnkit_norm, op)(*args)
