"""The "drop-in for torch.nn" promise where the bug hunts found rnnkit apart from torch.nn: torch's
own utilities (checkpoint, in-place ops on outputs, meta tensors, vmap) and the modules' interface
(constructor errors, cell attributes, repr)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import rnnkit

# options that run on the fused variant / norm kernels (one autograd node reading ctx.saved_tensors)
OPTIONS = [
    (rnnkit.LSTM, {"norm": "layer"}),
    (rnnkit.LSTM, {"norm": "layer", "proj_size": 2}),
    (rnnkit.GRU, {"norm": "layer"}),
    (rnnkit.RNN, {"norm": "layer"}),
    (rnnkit.LSTM, {"norm": "batch", "max_len": 5}),
    (rnnkit.LSTM, {"coupled_gates": True}),
    (rnnkit.LSTM, {"input_gate": False}),
    (rnnkit.GRU, {"reset_after": False}),
    (rnnkit.GRU, {"variant": "mut1"}),
]
OPTION_IDS = [f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for cls, kw in OPTIONS]


@pytest.mark.parametrize("cls, kw", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("impl", ["auto", "fused"])
def test_non_reentrant_checkpoint_equals_no_checkpoint(cls, kw, impl):
    # non-reentrant checkpoint lets a backward unpack each saved tensor once
    torch.manual_seed(0)
    m = cls(3, 4, 2, impl=impl, dtype=torch.float64, **kw)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    grads = []
    for ckpt in (False, True):
        xi = x.clone().requires_grad_()
        m.zero_grad()
        out = checkpoint(lambda t: m(t)[0], xi, use_reentrant=False) if ckpt else m(xi)[0]
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        grads.append([out.detach(), xi.grad, *(w.grad for w in m.parameters())])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
