"""Step Jacobians, recurrent eigenvalues and power iteration against numpy and the equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.diagnostics import jacobian_spectrum, power_iteration, recurrent_eigenvalues, step_jacobians

from .cells import LinearCell, orthogonal, stack

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def _same_set(a, b):
    """Compare eigenvalue multisets (order-free) by sorting on (real, imag) after rounding."""
    key = lambda v: sorted(v, key=lambda z: (round(z.real, 8), round(z.imag, 8)))  # noqa: E731
    np.testing.assert_allclose(key(a), key(b), atol=1e-10)


@pytest.mark.parametrize("cls", [rnnkit.RNN, nn.RNN, rnnkit.LSTM, nn.LSTM, rnnkit.GRU, nn.GRU])
def test_eigenvalues_against_numpy(cls):
    torch.manual_seed(0)
    m = cls(3, 4, num_layers=2, bidirectional=True)
    ev = recurrent_eigenvalues(m)
    assert list(ev) == ["l0", "l0_reverse", "l1", "l1_reverse"]
    names = {"RNN": ["W_hh"], "LSTM": list("ifgo"), "GRU": list("rzn")}[cls.__name__]
    for label in ev:
        W = getattr(m, "weight_hh_" + label).detach().numpy()
        assert list(ev[label]) == names
        for g, name in enumerate(names):
            _same_set(ev[label][name], np.linalg.eigvals(W[4 * g : 4 * (g + 1)]))
            assert np.all(np.diff(np.abs(ev[label][name])) <= 1e-12)  # by decreasing modulus


def test_eigenvalues_lstm_projection_and_custom_cell():
    m = nn.LSTM(3, 4, proj_size=2)
    ev = recurrent_eigenvalues(m)["l0"]
    W, Wr = m.weight_hh_l0.detach().numpy(), m.weight_hr_l0.detach().numpy()  # (16, 2), (2, 4)
    _same_set(ev["f"], np.linalg.eigvals(W[4:8] @ Wr))
    lin = stack(LinearCell, 2, 3)
    _same_set(recurrent_eigenvalues(lin)["l0"]["W_hh"], np.linalg.eigvals(lin.weight_hh_l0.detach().numpy()))


@pytest.mark.parametrize(
    ("kw", "names"),
    [({"coupled_gates": True}, "fgo"), ({"input_gate": False, "output_gate": False}, "fg"),
     ({"peephole": True}, "ifgo"), ({"variant": "mut1"}, "rn"), ({"variant": "mut2"}, "rzn")],
    ids=["cifg", "nig-nog", "peephole", "mut1", "mut2"],
)  # fmt: skip
def test_recurrent_blocks_of_variant_cells_are_named_by_their_gates(kw, names):
    """A CIFG LSTM's or a MUT1 GRU's weight_hh holds only the gates present (f g o; r n): its blocks
    were named 0, 1, 2 in recurrent_eigenvalues and the eigenvalue figure. They carry the gates'
    names now, each the matching rows of weight_hh."""
    from rnnkit.diagnostics import recurrent_matrices

    torch.manual_seed(0)
    m = (rnnkit.GRU if "variant" in kw else rnnkit.LSTM)(3, 4, bidirectional=True, **kw)
    blocks = recurrent_matrices(m)
    for label, sfx in (("l0", "l0"), ("l0_reverse", "l0_reverse")):
        assert list(blocks[label]) == list(names)
        W = getattr(m, f"weight_hh_{sfx}").detach().numpy()
        for g, name in enumerate(names):
            np.testing.assert_array_equal(blocks[label][name], W[4 * g : 4 * g + 4])
    assert list(recurrent_eigenvalues(m)["l0"]) == list(names)


def test_jacobian_of_linear_cell_is_w_hh():
    m = stack(LinearCell, 2, 4)
    with torch.no_grad():
        m.weight_hh_l0.copy_(0.5 * orthogonal(4) @ torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0])))
    js = jacobian_spectrum(m, torch.randn(5, 2, 2))
    W = m.weight_hh_l0.detach().numpy()
    for J in js.jacobians:
        np.testing.assert_allclose(J, W, atol=1e-12)
    np.testing.assert_allclose(js.singular_values, np.tile([2.0, 1.5, 1.0, 0.5], (5, 1)), rtol=1e-12)
    expect = [np.linalg.norm(np.linalg.matrix_power(W, k), 2) for k in range(1, 6)]
    np.testing.assert_allclose(js.product_norms, expect, rtol=1e-10)


@pytest.mark.parametrize("nonlin", ["tanh", "relu"])
def test_jacobian_of_elman_rnn_is_diag_act_prime_times_w(nonlin):
    m = nn.RNN(2, 4, nonlinearity=nonlin)
    x = torch.randn(6, 3, 2)
    out, _ = m(x)
    jacs, names = step_jacobians(m, x, sample=1)
    assert names == ("h",)
    W = m.weight_hh_l0.detach().numpy()
    h = out[:, 1].detach().numpy()
    Js = []
    for t in range(6):
        d = 1 - h[t] ** 2 if nonlin == "tanh" else (h[t] > 0).astype(float)
        Js.append(np.diag(d) @ W)
        np.testing.assert_allclose(jacs[t], Js[-1], atol=1e-12)
    # product norms: ‖J_5 J_4 ⋯ J_(6-k)‖ (the order backpropagation applies them; not commutative)
    js = jacobian_spectrum(m, x, sample=1)
    for k in range(1, 7):
        P = np.eye(4)
        for J in Js[6 - k :]:
            P = J @ P
        np.testing.assert_allclose(js.product_norms[k - 1], np.linalg.norm(P, 2), rtol=1e-10)


def test_jacobian_of_lstm_matches_torch_cell_and_reverse_direction():
    m = nn.LSTM(2, 3, bidirectional=True)
    x = torch.randn(4, 1, 2)
    cell = nn.LSTMCell(2, 3)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(m, name + "_l0_reverse"))
    out, _ = m(x)
    jacs, names = step_jacobians(m, x, direction=1)
    assert names == ("h", "c") and jacs.shape == (4, 6, 6)
    # reverse direction: processing order is t = 3, 2, 1, 0; state before t=3 is zero
    h, c = torch.zeros(1, 3), torch.zeros(1, 3)
    for i, t in enumerate([3, 2, 1, 0]):
        J = torch.autograd.functional.jacobian(
            lambda s, t=t: torch.cat(cell(x[t], (s[:, :3], s[:, 3:])), -1), torch.cat([h, c], -1)
        )[0, :, 0, :]
        np.testing.assert_allclose(jacs[i], J.numpy(), atol=1e-12)
        h, c = cell(x[t], (h, c))
        torch.testing.assert_close(h.detach(), out[t, :, 3:].detach())
    with pytest.raises(ValueError, match="no layer"):
        step_jacobians(m, x, layer=1)
    with pytest.raises(ValueError, match="sample"):
        step_jacobians(m, x, sample=3)


def test_power_iteration_converges_to_dominant_eigenvector_at_rate_lambda2_over_lambda1():
    Q = orthogonal(5).numpy()
    W = Q @ np.diag([3.0, -2.0, 1.0, 0.5, 0.1]) @ Q.T
    pi = power_iteration(W, steps=40, seed=1)
    assert pi.rate == pytest.approx(2 / 3)
    assert pi.eigenvalues[0] == pytest.approx(3.0)
    # the error in direction of the second eigenvector shrinks by exactly |λ₂/λ₁| per step,
    # up to normalization: tan(angle) is exact
    tan = pi.angles / np.sqrt(1 - pi.angles**2)
    coeffs = Q.T @ pi.iterates[0]
    lam = np.array([3.0, -2.0, 1.0, 0.5, 0.1])
    for k in (1, 10, 40):
        ck = coeffs * lam**k
        np.testing.assert_allclose(tan[k], np.linalg.norm(ck[1:]) / abs(ck[0]), rtol=1e-8, atol=1e-14)
    assert tan[40] < 1e-6 < tan[10]
    assert abs(abs(Q[:, 0] @ pi.iterates[-1]) - 1) < 1e-12
    np.testing.assert_allclose(pi.gains[-1], 3.0, rtol=1e-6)


def test_power_iteration_complex_pair_converges_to_the_plane():
    R = np.array([[np.cos(1.0), -np.sin(1.0)], [np.sin(1.0), np.cos(1.0)]]) * 2.0
    W = np.zeros((4, 4))
    W[:2, :2], W[2, 2], W[3, 3] = R, 1.0, -0.5
    Q = orthogonal(4, 3).numpy()
    pi = power_iteration(Q @ W @ Q.T, steps=50)
    assert pi.subspace.shape == (4, 2) and pi.rate == pytest.approx(0.5)
    assert pi.angles[-1] < 1e-12 < pi.angles[0]
    # the iterate keeps rotating inside the plane: consecutive iterates differ by ~1 radian
    assert np.arccos(np.clip(pi.iterates[-1] @ pi.iterates[-2], -1, 1)) == pytest.approx(1.0, abs=1e-6)


def test_power_iteration_errors():
    with pytest.raises(ValueError, match="square"):
        power_iteration(np.ones((2, 3)))
    with pytest.raises(ValueError, match="h0"):
        power_iteration(np.eye(2), h0=np.zeros(2))
    with pytest.raises(ValueError, match="steps"):
        power_iteration(np.eye(2), steps=0)


@pytest.mark.parametrize("steps", [True, 2.5, "3"])
def test_power_iteration_refuses_steps_that_are_no_int(steps):
    """True ran one step; 2.5 and "3" failed with a TypeError naming no argument."""
    with pytest.raises(ValueError, match=rf"steps must be an int >= 1, got {steps!r}"):
        power_iteration(np.eye(2), steps=steps)


def test_power_iteration_refuses_a_matrix_or_start_that_is_not_finite():
    """A NaN W failed in numpy's eig ("Array must not contain infs or NaNs"); an inf h0 iterated as NaN."""
    with pytest.raises(ValueError, match=r"needs a finite W, got 1 NaN/inf of its 4 entries"):
        power_iteration(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"h0 must be a finite nonzero vector of shape \(2,\)"):
        power_iteration(np.eye(2), h0=np.array([np.inf, 1.0]))
    assert len(power_iteration(np.eye(2), steps=np.int64(3)).gains) == 3  # numpy ints still taken


def _chain_vs_forward(m, x, sizes):
    """``J_{T-1}⋯J_0`` of :func:`step_jacobians` against ``∂s_{T-1}/∂s_init`` of the layer's forward."""
    jacs, _ = step_jacobians(m, x)
    prod = np.eye(jacs.shape[1])
    for J in jacs:
        prod = J @ prod

    def final(s):
        parts = tuple(p.view(1, 1, -1) for p in s.split(sizes))
        hn = m(x[:, :1], parts if len(parts) > 1 else parts[0])[1]
        return torch.cat([h.reshape(-1) for h in (hn if isinstance(hn, tuple) else (hn,))])

    ref = torch.autograd.functional.jacobian(final, torch.zeros(sum(sizes), dtype=torch.float64))
    np.testing.assert_allclose(prod, ref.numpy(), atol=1e-10)


def test_step_jacobians_batch_norm_use_each_steps_statistics():
    torch.manual_seed(0)
    m = rnnkit.LSTM(3, 4, norm="batch").double()
    for _ in range(3):  # distinct running statistics per step
        m(torch.randn(5, 8, 3, dtype=torch.float64) * 2 + 1)
    _chain_vs_forward(m.eval(), torch.randn(5, 2, 3, dtype=torch.float64), [4, 4])


@pytest.mark.parametrize("cls,sizes", [(rnnkit.LSTM, [4, 4]), (rnnkit.GRU, [4])])
def test_step_jacobians_include_zoneout(cls, sizes):
    torch.manual_seed(0)
    m = cls(3, 4, zoneout=0.3).double().eval()
    _chain_vs_forward(m, torch.randn(5, 2, 3, dtype=torch.float64), sizes)


@pytest.mark.parametrize("kw", [{}, {"norm": "layer"}, {"reset_after": False}], ids=["gru", "ln", "cho"])
def test_step_jacobians_under_autocast_are_the_float32_ones(kw):
    """Under autocast the step Jacobians ran the cell's step with autocast on (after a replay in
    float32): a GRU's step crashed in torch.lerp (bfloat16 and float32); they run with autocast
    off now, as the replay: the float32 Jacobians."""
    torch.manual_seed(0)
    m = rnnkit.GRU(3, 4, num_layers=2, dtype=torch.float32, **kw).eval()
    x = torch.randn(5, 2, 3, dtype=torch.float32)
    want, _ = step_jacobians(m, x, layer=1, sample=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = step_jacobians(m, x, layer=1, sample=1)
        js = jacobian_spectrum(m, x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.isfinite(js.singular_values).all()


@pytest.mark.parametrize("cls", [rnnkit.RNN, nn.GRU])
def test_complex_layers_eigenvalues_right_and_real_only_diagnostics_refused(cls):
    """torch.nn's layers run complex128: the eigenvalues were those of Re W_hh (``double()`` dropped
    the imaginary part), activity's states were cast to real, and jacobian_spectrum and the default
    probe of gradient_flow failed in autograd ('real scalar outputs')."""
    from rnnkit.diagnostics import activity, gradient_flow

    m = cls(3, 4, dtype=torch.complex128)
    x = torch.randn(5, 2, 3, dtype=torch.complex128)
    W = m.weight_hh_l0.detach().numpy()
    assert np.abs(W.imag).max() > 0
    for g, ev in enumerate(recurrent_eigenvalues(m)["l0"].values()):
        want = np.linalg.eigvals(W[4 * g : 4 * (g + 1)])
        np.testing.assert_allclose(np.sort_complex(ev), np.sort_complex(want), atol=1e-12)
    for diagnose in (activity, jacobian_spectrum):
        with pytest.raises(ValueError, match="needs a real layer, got complex parameters"):
            diagnose(m, x)
    with pytest.raises(ValueError, match="the linear probe needs a real output, got torch.complex128"):
        gradient_flow(m, x)
    assert gradient_flow(m, x, lambda out: out[0].abs().sum()).norms["l0"]["h"].min() > 0
    with pytest.raises(ValueError, match="power_iteration needs a real matrix, got dtype complex128"):
        power_iteration(W[:4])


@pytest.mark.parametrize("make", [lambda: rnnkit.LSTM(3, 4, bidirectional=True), lambda: rnnkit.MinGRU(3, 4)])
def test_non_integer_sample_layer_direction_are_errors(make):
    """True passed the range checks as 1 (sequence 1, the reverse direction, layer 1), a float
    failed as an IndexError or TypeError deep inside."""
    from rnnkit.diagnostics import activity

    m, x = make(), torch.randn(5, 2, 3)
    for bad in (True, 1.0):
        with pytest.raises(ValueError, match=f"sample must be an integer in \\[0, 2\\), got {bad!r}"):
            jacobian_spectrum(m, x, sample=bad)
        with pytest.raises(ValueError, match=f"sample must be an integer in \\[0, 2\\), got {bad!r}"):
            activity(m, x, sample=bad)
        with pytest.raises(ValueError, match=f"no layer {bad!r} direction 0 in"):
            jacobian_spectrum(m, x, layer=bad)
        with pytest.raises(ValueError, match=f"no layer 0 direction {bad!r} in"):
            jacobian_spectrum(m, x, direction=bad)
