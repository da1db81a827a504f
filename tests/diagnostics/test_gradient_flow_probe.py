"""gradient_flow's probe loss and per-step factor against their definitions (plain torch/numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.diagnostics import gradient_flow, readout_loss
from rnnkit.diagnostics.gradient_flow import GradientFlow


@pytest.mark.parametrize("kind", ["last", "per_step"])
@pytest.mark.parametrize("time_dim", [0, 1])
def test_readout_loss_is_the_seeded_linear_probe(kind, time_dim):
    """L = Σ vᵀ h_t (or vᵀ h_{T-1}) with v ~ N(0, 1/F) from the seed: a probe scaled by 1/F
    instead of 1/√F survived the tests, which took the probe itself as their oracle."""
    out = torch.randn(5, 3, 4)
    v = torch.randn(4, generator=torch.Generator().manual_seed(7), dtype=torch.float64) / 2.0
    h = out if kind == "per_step" else out.select(time_dim, out.shape[time_dim] - 1)
    torch.testing.assert_close(readout_loss(out, kind, time_dim, seed=7), (h @ v).sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("loss", ["last", "per_step"])
def test_gradient_flow_of_a_batch_first_layer_probes_its_time_dim(loss):
    """The probe of a batch_first layer reads its time dimension (1): probing dimension 0 (the
    batch) survived the tests. Same weights, transposed input: the same norms."""
    torch.manual_seed(0)
    tm, bf = rnnkit.GRU(2, 3), rnnkit.GRU(2, 3, batch_first=True)
    bf.load_state_dict(tm.state_dict())
    x = torch.randn(6, 4, 2)
    want = gradient_flow(tm, x, loss=loss).norms["l0"]["h"]
    np.testing.assert_allclose(
        gradient_flow(bf, x.transpose(0, 1), loss=loss).norms["l0"]["h"], want, rtol=1e-12
    )
    assert want[0] > 0 and want[-1] > 0


def test_per_step_factor_fits_only_the_nonzero_norms():
    """exp of the least-squares slope of log‖∂L/∂h_t‖ against distance, over the nonzero norms
    only (a zero one, from a step the loss cannot see, would give log 0): norms 4, 2, 1 at
    distances 2, 1, 0 change by 2 per step; the zero at distance 3 is left out. Fewer than two
    nonzero norms: NaN."""
    gf = GradientFlow(["l0"], {"l0": {"h": np.array([0.0, 4.0, 2.0, 1.0])}}, {"l0": False}, 0.0, "custom")
    assert gf.per_step_factor() == pytest.approx(2.0, rel=1e-12)
    one = GradientFlow(["l0"], {"l0": {"h": np.array([0.0, 0.0, 3.0])}}, {"l0": False}, 0.0, "custom")
    assert np.isnan(one.per_step_factor())
