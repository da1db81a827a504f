"""The C++ GRU / RNN kernels with their batch split over 2 threads vs the pure kernels.

The compiled GRU-family and RNN kernels split the batch into one block of rows per thread for
the whole time loop (csrc/gru_rnn.cpp, csrc/variants.cpp). At the tiny sizes of the other tests
they stay on one thread, so here B=40, H=96 (split: >= 2048 values per step) in float64, packed
(the blocks shrink and empty as sequences end), both directions, with the mask and zoneout: a
race, or a thread reading another thread's rows, changes the numbers far beyond 1e-12.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit.kernels as K
from rnnkit.cells import GRUCellMath, RNNCellMath

from .test_fused_kernels import require_ext

BATCH_SIZES = [40, 40, 40, 37, 21, 3]  # packed: rows leave both threads' blocks
I, H = 8, 96
CELLS = {
    "gru": lambda: GRUCellMath(I, H),
    "gru_nobias": lambda: GRUCellMath(I, H, bias=False),
    "gru_reset_before": lambda: GRUCellMath(I, H, reset_after=False),
    "gru_mut1": lambda: GRUCellMath(I, H, variant="mut1"),
    "gru_mut2": lambda: GRUCellMath(I, H, variant="mut2"),
    "gru_mut3_before": lambda: GRUCellMath(I, H, variant="mut3", reset_after=False),
    "rnn_tanh": lambda: RNNCellMath(I, H),
    "rnn_relu": lambda: RNNCellMath(I, H, nonlinearity="relu"),
}


@pytest.mark.parametrize("option", ["plain", "mask", "zoneout"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", list(CELLS))
def test_two_threads_match_pure(name, reverse, option, two_threads):
    require_ext()
    torch.manual_seed(0)
    cell = CELLS[name]()
    p = {s.name: torch.empty(s.shape, dtype=torch.float64, requires_grad=True) for s in cell.param_specs()}
    cell.reset_parameters(p)
    x = torch.randn(sum(BATCH_SIZES), I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(BATCH_SIZES[0], H, dtype=torch.float64, requires_grad=True)
    mask = torch.bernoulli(torch.full((BATCH_SIZES[0], H), 0.7, dtype=torch.float64)) / 0.7
    kw: dict = {"mask": mask} if option == "mask" else {}
    if option == "zoneout":
        kw["zoneout"] = (0.3,)
    w_out, w_h = torch.randn(x.shape[0], H, dtype=torch.float64), torch.randn_like(h0)
    res = []
    for use_ext in (False, True):
        out, (hn,) = K.run_direction(cell, p, cell.project_input(p, x), BATCH_SIZES, (h0,), reverse,
                                     use_ext=use_ext, **kw)  # fmt: skip
        loss = (out * w_out).sum() + (hn * w_h).sum()
        res.append([out, hn, *torch.autograd.grad(loss, [x, h0, *p.values()])])
    for a, b in zip(*res, strict=True):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
