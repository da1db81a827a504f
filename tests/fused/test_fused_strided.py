"""The fused kernels on strided memory: states, inputs and output gradients that are not
row-major contiguous (a transposed ``c0``, a permuted ``grad_output``, ...) must give the
reference loop's numbers. The C++ kernels read raw row-major pointers, so every tensor they
read must be made contiguous on the way in (a ``clone()`` keeps a dense tensor's strides)."""

from __future__ import annotations

import pytest
import torch

import rnnkit

from .test_fused_kernels import require_ext


def _pair(family: str, **kw):
    torch.manual_seed(0)
    loop = getattr(rnnkit, family)(impl="loop", dtype=torch.float64, **kw)
    fused = getattr(rnnkit, family)(impl="fused", dtype=torch.float64, **kw)
    fused.load_state_dict(loop.state_dict())
    return loop, fused


def _transposed(*shape: int) -> torch.Tensor:
    """A dense ``(D, B, H)`` tensor whose last two dims are stored transposed."""
    D, B, H = shape
    return torch.randn(D, H, B, dtype=torch.float64).transpose(1, 2)


def _grads(module, x, hx):
    out, (hn, cn) = module(x, hx)
    loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
    loss = loss + (hn * 0.7).sum() + (cn * cn).sum()
    return [out, hn, cn, *torch.autograd.grad(loss, [x, *hx, *module.parameters()])]


@pytest.mark.parametrize("opts", [{"norm": "layer"}, {"norm": "batch"}, {"norm": "layer", "proj_size": 2}])
@pytest.mark.parametrize("train", [True, False])
def test_norm_lstm_transposed_c0(opts, train):
    """A transposed ``c0`` (dense, not row-major): the normalized LSTM kernels cloned it as
    their running cell buffer and read it row-major, so the cell state started scrambled."""
    require_ext()
    loop, fused = _pair("LSTM", input_size=3, hidden_size=4, bidirectional=True, **opts)
    loop.train(train), fused.train(train)
    P = opts.get("proj_size") or 4
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, P, dtype=torch.float64, requires_grad=True)
    hx = (h0, _transposed(2, 3, 4).requires_grad_())
    for a, b in zip(_grads(loop, x, hx), _grads(fused, x, hx)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
