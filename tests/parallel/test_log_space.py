"""``log_space=True`` (Heinsen's scan, ``rnnkit.parallel.mingru.log_scan``): float32 gradients
against float64 over a long sequence, and second-order gradients."""

from __future__ import annotations

import pytest
import torch

import rnnkit

from . import references


@pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_float32_gradients_stay_close_to_float64_over_long_sequences(cls, bidirectional):
    """Autograd through ``cumsum`` + ``logcumsumexp`` cancelled sums that grow with T: the float32
    gradients were up to ~2e-2 off float64 at T = 1000 (relative to their largest entry), ~30%
    at T = 5000, while the outputs were 4e-5 off. The scan's own backward keeps them ~1e-5."""
    T, B, I, H, D = 1000, 3, 4, 6, 1 + bidirectional
    torch.manual_seed(0)
    m64 = cls(I, H, log_space=True, bidirectional=bidirectional, dtype=torch.float64)
    m32 = cls(I, H, log_space=True, bidirectional=bidirectional, dtype=torch.float32)
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    x, h0 = torch.randn(T, B, I, dtype=torch.float64), torch.rand(D, B, H, dtype=torch.float64) + 0.1
    grads = []
    for m, dtype in ((m64, torch.float64), (m32, torch.float32)):
        xs, hs = x.to(dtype).requires_grad_(), h0.to(dtype).requires_grad_()
        out, h_n = m(xs, hs)
        w = torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape)  # mixed signs
        grads.append(torch.autograd.grad((out * w).sum() + h_n.sum(), [xs, hs, *m.parameters()]))
    errs = [((g32.double() - g64).abs().max() / g64.abs().max()).item() for g32, g64 in zip(*grads[::-1])]
    assert max(errs) < 3e-5, errs


@pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM])
def test_second_order_gradients(cls):
    torch.manual_seed(0)
    m = cls(3, 2, log_space=True, bidirectional=True)
    x = torch.randn(4, 2, 3, requires_grad=True)
    h0 = (torch.rand(2, 2, 2) + 0.1).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x, h0: m(x, h0)[0], (x, h0))


@pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM])
@pytest.mark.parametrize("how", ["autocast", "bfloat16_model"])
def test_half_precision_runs_the_log_scan_in_float32(cls, how):
    """``Σ log a`` in bfloat16 lost ~1 in the exponent within 200 steps: the outputs were 60-100%
    off float32's. Now the scan runs in float32 and returns the input's dtype, as close to
    float32 as the ordinary scan (~1%)."""
    torch.manual_seed(0)
    m = cls(4, 4, log_space=True, dtype=torch.float32)
    x = torch.randn(200, 3, 4, dtype=torch.float32)
    want, _ = m(x)
    if how == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, h_n = m(x)
    else:
        got, h_n = m.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert got.dtype == h_n.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0.03, atol=0.03)


@pytest.mark.parametrize("cls", [rnnkit.MinGRU, rnnkit.MinLSTM])
def test_gradient_at_a_zero_candidate_is_the_papers(cls):
    """``h̃ = g(v)`` is ``v + 0.5`` for ``v ≥ 0``: ``∂ log g / ∂v = 2`` at ``v = 0``. ``log_g`` took
    ``relu(v)``, whose derivative there is 0: a zero input of a bias-free layer (``v = 0``
    exactly) had no gradient through ``h̃`` (0.56 off the paper's loop for minGRU)."""
    torch.manual_seed(0)
    m = cls(3, 4, bias=False, log_space=True)
    x = torch.zeros(5, 2, 3, requires_grad=True)
    got = torch.autograd.grad(m(x)[0].sum(), x)[0]
    fn = references.mingru if cls is rnnkit.MinGRU else references.minlstm
    want = torch.autograd.grad(fn(m, m.layer_params(0), x, torch.zeros(2, 4))[0].sum(), x)[0]
    torch.testing.assert_close(got, want)
