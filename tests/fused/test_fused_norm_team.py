"""The batch-norm LSTM in training on its team of row blocks (``csrc/norm_team.h``), forward
and backward, against the loop (float64): shapes at the edges of the team's row blocks."""

from __future__ import annotations

import pytest
import torch

import rnnkit

from .test_fused_kernels import require_ext


def _train_call(m: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Output, final state, the gradients of the input and every parameter, and the buffers."""
    torch.manual_seed(1)
    out, (h, c) = m(x)
    loss = (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum() + c.sum()
    return [out, h, c, *torch.autograd.grad(loss, [x, *m.parameters()]), *m.buffers()]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B,H", [(2, 1024), (3, 683)])
def test_fewer_than_four_rows_in_a_wide_step(threads, B, H, num_threads):
    """Regression: a step of B < 4 rows but at least 8192 values (B x 4H) asked the team for
    B / 4 = 0 row blocks, so no thread owned a row: the output was never written (garbage) and
    the gradients were wrong, on any number of threads."""
    require_ext()
    num_threads(threads)
    torch.manual_seed(0)
    a, b = (rnnkit.LSTM(3, H, norm="batch", impl=impl) for impl in ("fused", "loop"))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, B, 3, requires_grad=True)
    for u, v in zip(_train_call(a, x), _train_call(b, x), strict=True):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)
