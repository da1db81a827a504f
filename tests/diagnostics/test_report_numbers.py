"""The numbers ``rnnkit diagnose`` writes (summary.txt's lines, summary.json's fields) against the
measures they report, recomputed here from their definitions."""

from __future__ import annotations

import numpy as np
import torch

import rnnkit
from rnnkit.diagnostics.report import _snap_json, _summary_lines, snapshot


def _line(lines: list[str], start: str) -> str:
    (line,) = [ln.strip() for ln in lines if ln.strip().startswith(start)]
    return line


def test_summary_and_json_report_the_measures():
    """Ratio ‖∂L/∂h_0‖/‖∂L/∂h_T-1‖ of the top layer, spectral radius max |λ| of each block, the
    product norms ‖J_T-1⋯J_T-k‖ for k = 1.. in that order: the inverse ratio, min |λ| and the
    product norms reversed each survived every test (the CLI tests read only their shapes)."""
    torch.manual_seed(0)
    gru = rnnkit.GRU(1, 5, num_layers=2, batch_first=True)
    snap = snapshot(gru, torch.randn(3, 8, 1))
    n = snap.flows["last"].norms["l1"]["h"]
    line = _line(_summary_lines("gru", "init", snap), "loss at last step (l1)")
    assert f"‖∂L/∂h_0‖/‖∂L/∂h_T-1‖ = {n[0] / n[-1]:.3g}," in line and n[0] != n[-1]
    data = _snap_json(snap)
    for label, blocks in rnnkit.diagnostics.recurrent_matrices(gru).items():
        for name, W in blocks.items():
            rho = np.abs(np.linalg.eigvals(W)).max()
            np.testing.assert_allclose(data["spectral_radius"][label][name], rho, rtol=1e-12)
    prod, want = np.eye(5), []  # (S = H: the GRU state is h)
    for J in snap.spectrum.jacobians[::-1]:  # J_T-1 first: the gradient's path from the last step
        prod = prod @ J
        want.append(np.linalg.norm(prod, 2))
    np.testing.assert_allclose(data["jacobian_product_norms"], want, rtol=1e-12)
    assert want[0] != want[-1]


def test_summary_reports_the_median_memory_time():
    """The decay line's memory time is the median of −1/log|a_t| over steps, batch and units (the
    mean survived every test)."""
    torch.manual_seed(0)
    m = rnnkit.MinGRU(1, 4, batch_first=True)
    snap = snapshot(m, torch.randn(3, 8, 1))
    a = np.abs(snap.decay.decays["l0"])
    tau, mean = np.median(-1 / np.log(a)), np.mean(-1 / np.log(a))
    line = _line(_summary_lines("mingru", "init", snap), "decay a_t = 1 − z (l0)")
    assert f"median memory time −1/log|a| {tau:.3g} steps" in line and f"{tau:.3g}" != f"{mean:.3g}"
