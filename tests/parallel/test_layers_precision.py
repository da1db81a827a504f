"""MinGRU, MinLSTM, QRNN and LRU in reduced precision: half-precision parameters, autocast's
dtypes through forward and step, saturated gates in float32."""

from __future__ import annotations

import pytest
import torch

import rnnkit

from .test_layers import NAMES, flat, make


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_lru_converted_to_half_precision_says_why(dtype):
    """The constructor refuses half precision (the state is complex); an LRU converted with
    .to(dtype) afterwards failed deep inside torch.complex / exp of complex32 instead."""
    m = make("lru").to(dtype)
    x = torch.randn(5, 2, 3, dtype=dtype)
    for call in (lambda: m(x), lambda: m.step(x[0])):
        with pytest.raises(ValueError, match="LRU needs float32 or float64 parameters"):
            call()


@pytest.mark.parametrize("name", ["mingru", "mingru_log", "minlstm_log"])
def test_autocast_float32_state_joins_the_gates_dtype(name, monkeypatch):
    """Under autocast a float32 h0 joins the bfloat16 gates on every path (as in
    ParallelRecurrent.scan): minGRU's fused scan and the log-space scan kept it float32, so
    with the chunked scan (what CUDA runs in half precision) and in log space the outputs
    came back float32, unlike minLSTM's and the dtype the scan op declares."""
    monkeypatch.setenv("RNNKIT_SCAN_IMPL", "chunked")
    m = make(name, dtype=torch.float32)
    x = torch.randn(70, 2, 3, dtype=torch.float32)
    h0 = torch.rand(1, 2, 4, dtype=torch.float32) + 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = m(x, h0)
        want, want_h = m(x, h0.bfloat16())
    assert out.dtype == h_n.dtype == torch.bfloat16
    assert torch.equal(out, want) and torch.equal(h_n, want_h)


@pytest.mark.parametrize("name", NAMES)
def test_step_under_autocast_returns_the_forward_dtype(name):
    """``step`` under autocast gives what ``forward`` gives, step by step, in its dtype (LRU's
    complex state keeps float32 on both). The float32 zero (or carried) state promoted the
    half-precision gates: minGRU, minLSTM and QRNN stepped in float32 where their forward ran
    in bfloat16."""
    m = make(name, num_layers=2, dtype=torch.float32)
    x = torch.randn(6, 2, 3, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, h_n = m(x)
        ys, s = [], None
        for t in range(x.shape[0]):
            y, s = m.step(x[t], s)
            ys.append(y)
    assert {y.dtype for y in ys} == {want.dtype}
    assert [t.dtype for t in flat(s)] == [t.dtype for t in flat(h_n)]
    torch.testing.assert_close(torch.stack(ys).float(), want.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("masked", [False, True])
def test_minlstm_saturated_gates_stay_finite_in_float32(masked):
    """f′ = f / (f + i) is 0 / 0 in float32 once both gates underflow (k < −104): minLSTM
    computes it as σ(log f − log i) = σ(softplus(−k_i) − softplus(−k_f)), finite and equal to
    float64 there, on the fused scan and on the padded (masked) path, gradients included."""
    res = []
    for dtype in (torch.float32, torch.float64):
        m = rnnkit.MinLSTM(2, 3, dtype=dtype)
        with torch.no_grad():
            m.weight_ih_l0.zero_()
            m.bias_ih_l0.copy_(torch.tensor([-120.0, -110.0, 3.0] * 2 + [1.0, -2.0, 0.5], dtype=dtype))
        x = torch.linspace(-1, 1, 16, dtype=dtype).reshape(4, 2, 2).requires_grad_(True)
        out = m(x, lengths=torch.tensor([4, 3]))[0] if masked else m(x)[0]
        res.append([out, *torch.autograd.grad(out.sum(), [x, *m.parameters()])])
    for a, b in zip(*res, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)
