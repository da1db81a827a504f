"""CUDA: numerics and decoding fixes of the CPU suite, on a GPU. Skipped where CUDA is absent (CI).

Run on a GPU machine with ``python -m pytest tests/test_cuda_numerics.py``. The CPU suite checks
these on the CPU; a GPU runs other kernels (cuDNN is not involved: these are rnnkit's own paths)
— ``logcumsumexp``/``cumsum`` of the log-space scan and its hand-written backward, the fused
pure-PyTorch kernels' relu rule at NaN outputs, batch norm's per-step slots when a sequence is
fed in pieces.
"""

from __future__ import annotations

import functools

import pytest
import torch

import rnnkit
from rnnkit.tasks.charlm import CharLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = torch.device("cuda")


@pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM])
def test_log_space_float32_gradients_on_cuda_match_float64(cls):
    """The log-space scan's own backward on the GPU: float32 gradients over T = 2000 within
    1e-4 (relative to the largest) of float64 on the CPU (autograd through the cumulative sums
    was ~10% off at this length)."""
    T, B, I, H = 2000, 3, 4, 6
    torch.manual_seed(0)
    m64 = cls(I, H, log_space=True, bidirectional=True, dtype=torch.float64)
    m32 = cls(I, H, log_space=True, bidirectional=True, dtype=torch.float32).to(DEV)
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    x, h0 = torch.randn(T, B, I, dtype=torch.float64), torch.rand(2, B, H, dtype=torch.float64) + 0.1
    grads = []
    for m, dtype, dev in ((m64, torch.float64, "cpu"), (m32, torch.float32, DEV)):
        xs, hs = x.to(dev, dtype).requires_grad_(), h0.to(dev, dtype).requires_grad_()
        out, h_n = m(xs, hs)
        w = torch.linspace(-1, 1, out.numel(), dtype=dtype, device=dev).view(out.shape)
        grads.append(torch.autograd.grad((out * w).sum() + h_n.sum(), [xs, hs, *m.parameters()]))
    errs = [((g32.cpu().double() - g64).abs().max() / g64.abs().max()).item() for g64, g32 in zip(*grads)]
    assert max(errs) < 1e-4, errs


@pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_log_space_under_autocast_on_cuda_runs_the_scan_in_float32(cls, dtype):
    """...and returns the autocast dtype, as on the CPU: CUDA's autocast runs softplus (the
    logarithms) in float32, and the layer returned float32 under float16 autocast."""
    torch.manual_seed(0)
    m = cls(4, 4, log_space=True, dtype=torch.float32).to(DEV)
    x = torch.randn(300, 3, 4, device=DEV, dtype=torch.float32)
    want, _ = m(x)
    with torch.autocast("cuda", dtype=dtype):
        got, h_n = m(x)
    assert got.dtype == h_n.dtype == dtype
    torch.testing.assert_close(got.float(), want, rtol=0.03, atol=0.03)
    torch.autograd.grad(got.float().sum(), list(m.parameters()))  # the backward runs in half too
    with torch.autocast("cuda", dtype=dtype):  # one step, as the whole sequence's first
        y, s = m.step(x[0], None)
    assert y.dtype == s.dtype == dtype
    torch.testing.assert_close(y, got[0])


@pytest.mark.parametrize("opts", [{}, {"norm": "layer"}, {"zoneout": 0.3}], ids=["plain", "layer", "zoneout"])
def test_fused_relu_gradient_passes_nan_outputs_on_cuda(opts):
    """torch's relu rule (gradient kept where the output is not <= 0, NaN included) in the fused
    kernels on the GPU, as the loop on the GPU."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, dtype=torch.float64, device=DEV)
    x[-1, 1, 0] = float("nan")
    grads = {}
    for impl in ("loop", "fused"):
        torch.manual_seed(1)
        m = rnnkit.RNN(2, 5, nonlinearity="relu", impl=impl, dtype=torch.float64, **opts).to(DEV).eval()
        out, h_n = m(x)
        grads[impl] = torch.autograd.grad(out.sum() + h_n.sum(), list(m.parameters()))
    for got, want in zip(grads["fused"], grads["loop"], strict=True):
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("impl", ["loop", "fused"])
def test_batch_norm_sequence_in_pieces_on_cuda(impl):
    """``step=`` (the pieces' first time index) on the GPU: step-by-step decoding of a batch-norm
    LSTM equals one call over the whole sequence, past ``max_len`` too."""
    torch.manual_seed(0)
    m = rnnkit.LSTM(3, 4, 2, impl=impl, peephole=True, norm="batch", max_len=6, dtype=torch.float64)
    m = m.to(DEV).eval()
    with torch.no_grad():
        for name, b in m.named_buffers():
            b.copy_(torch.rand_like(b) + (0.5 if "var" in name else -0.5))
    x = torch.randn(9, 2, 3, dtype=torch.float64, device=DEV)
    want, (h, c) = m(x)
    outs, state = [], None
    for t in range(x.shape[0]):
        y, state = m(x[t : t + 1], state, None, t)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs), want)
    torch.testing.assert_close(state, (h, c))
    # the char LM's forward passes ``step`` on to its stack
    factory = functools.partial(rnnkit.LSTM, norm="batch", max_len=6)
    lm = CharLM(11, hidden_size=8, num_layers=2, embedding_dim=5, rnn_factory=factory).to(DEV, torch.float64)
    ids = torch.randint(11, (2, 9), device=DEV)
    want, _ = lm.eval()(ids)
    got, state = lm(ids[:, :4])
    got2, _ = lm(ids[:, 4:], state, step=4)
    torch.testing.assert_close(torch.cat([got, got2], 1), want)
