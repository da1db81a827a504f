"""The compiled LSTM kernels projecting their own input (``run_layer_direction``, ``InputChunks``).

On the extension (standard and Greff-layout LSTM kernels),
``rnnkit.kernels.run_layer_direction`` hands the layer input ``x`` and ``W_ih, b_ih + b_hh`` to
the kernel, which computes ``x W_ihᵀ + b`` a chunk of steps (at most 128 rows) at a time.
Checked against ``project_input`` + ``run_direction`` (the projection outside the kernel) and
the reference loop, in float64, for every chunk layout: many steps per chunk, a chunk boundary
inside a packed batch, a single step larger than a chunk, both directions, one and two threads.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit.kernels as K
from rnnkit.cells import LSTMCellMath
from rnnkit.kernels import ops, variants
from rnnkit.loop import run_direction as loop_direction

from .test_fused_kernels import require_ext

LAYOUTS = {
    "many_steps_per_chunk": [8, 8, 8, 7, 5, 5, 2, 1],  # all in one chunk
    "packed_across_chunks": [60, 60, 50, 40, 40, 3],  # chunks of 120, 90, 43 rows
    "step_above_a_chunk": [150, 150, 90, 10],  # a step of 150 rows alone in its chunk
}
CELLS = {
    "lstm": {},
    "peephole_proj": {"peephole": True, "proj_size": 5},
    "nobias": {"bias": False},
    # the Greff layouts (csrc/lstm_variants_impl.h): 3 gates, 4 gates, FGR's gate recurrence
    "cifg_peephole": {"coupled_gates": True, "peephole": True},
    "niaf_proj": {"input_activation": False, "proj_size": 5},
    "fgr_nobias": {"full_gate_recurrence": True, "bias": False},
}


def _params(cell, dtype=torch.float64):
    p = {s.name: torch.empty(s.shape, dtype=dtype, requires_grad=True) for s in cell.param_specs()}
    cell.reset_parameters(p)
    if "weight_peephole" in p:  # zero at init: make the peepholes matter
        p["weight_peephole"].data.uniform_(-0.5, 0.5)
    return p


@pytest.fixture
def projections(monkeypatch):
    """The ``proj`` argument of every kernel call (None: ``xp`` from outside)."""
    seen = []

    def spy(real):
        def run(*args, proj=None, **kw):
            seen.append(proj)
            return real(*args, proj=proj, **kw)

        return run

    monkeypatch.setattr(ops, "forward_impl", spy(ops.forward_impl))
    monkeypatch.setattr(variants, "forward_impl", spy(variants.forward_impl))
    return seen


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(CELLS))
def test_in_kernel_projection_matches(name, layout, reverse, threads, num_threads, projections):
    require_ext()
    num_threads(threads)
    torch.manual_seed(0)
    I, H = 7, 64 if threads == 2 else 9  # with 2 threads: 150 * 64 * 256 multiply-adds, split
    cell = LSTMCellMath(I, H, **CELLS[name])
    p = _params(cell)
    bsz = LAYOUTS[layout]
    S = cell.state_sizes()
    x = torch.randn(sum(bsz), I, dtype=torch.float64, requires_grad=True)
    h0 = tuple(torch.randn(bsz[0], s, dtype=torch.float64, requires_grad=True) for s in S)
    mask = torch.rand(bsz[0], S[0], dtype=torch.float64).ge(0.3).double() / 0.7
    zm = [torch.rand(len(bsz), bsz[0], s).lt(0.2).double() for s in S]
    zo = (0.2, 0.1, 0.15)[: len(S)]  # h, c (and FGR's gate state)

    def run(mode):
        if mode == "inside":
            return K.run_layer_direction(cell, p, x, bsz, h0, reverse, mask, zo, zm)
        if mode == "outside":
            xp = K.project_input(cell, p, x)
            return K.run_direction(cell, p, xp, bsz, h0, reverse, mask, None, zo, zm)
        from rnnkit.cells import StepContext

        ctx = StepContext(training=True, recurrent_mask=mask)
        return loop_direction(cell, p, cell.project_input(p, x), bsz, h0, reverse, ctx, zo, zm)

    results = {}
    for mode in ("inside", "outside", "loop"):
        out, st = run(mode)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()
        loss = loss + sum((s * s).sum() for s in st)
        leaves = [x, *h0, *p.values()]
        results[mode] = (out, *st, *torch.autograd.grad(loss, leaves))
    assert [p is not None for p in projections] == [True, False]  # "inside" handed x to the kernel
    for mode in ("outside", "loop"):
        for a, b in zip(results["inside"], results[mode]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_in_kernel_projection_gradcheck():
    require_ext()
    torch.manual_seed(1)
    cell = LSTMCellMath(3, 4, peephole=True)
    p = _params(cell)
    bsz = [3, 3, 2, 1]
    x = torch.randn(sum(bsz), 3, dtype=torch.float64, requires_grad=True)
    h0 = tuple(torch.randn(3, 4, dtype=torch.float64, requires_grad=True) for _ in range(2))
    names = list(p)

    def f(x, h, c, *ws):
        out, st = K.run_layer_direction(cell, dict(zip(names, ws)), x, bsz, (h, c), True)
        return (out, *st)

    assert torch.autograd.gradcheck(f, (x, *h0, *p.values()))


def test_no_in_kernel_projection_without_the_extension(monkeypatch, projections):
    """The pure kernels (or another kind) get the projection from outside."""
    monkeypatch.setattr(K, "backend", lambda x: "pure")
    cell = LSTMCellMath(3, 4)
    p = _params(cell)
    x = torch.randn(6, 3, dtype=torch.float64)
    h0 = (torch.zeros(2, 4, dtype=torch.float64),) * 2
    out, _ = K.run_layer_direction(cell, p, x, [2, 2, 2], h0)
    ref, _ = loop_direction(cell, p, cell.project_input(p, x), [2, 2, 2], h0)
    assert projections == [None]
    torch.testing.assert_close(out, ref)
