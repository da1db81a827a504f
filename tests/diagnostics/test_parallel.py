"""Diagnostics of the time-parallel layers (MinGRU, MinLSTM, QRNN, LRU), float64.

The gradient flow is checked against a direct autograd computation written from each
paper's equations: a loop ``s_t = a_t ⊙ s_{t−1} + b_t + δ_t`` with ``δ_t = 0``, whose
``∂L/∂δ_t`` is, by definition, the total ``∂L/∂s_t``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.diagnostics import (
    activity,
    decay_spectrum,
    gradient_flow,
    jacobian_spectrum,
    readout_loss,
    recurrent_eigenvalues,
    recurrent_matrices,
    replay,
    step_jacobians,
)
from rnnkit.diagnostics.parallel import layer_decay
from rnnkit.state import map_tensors

LAYERS = {
    "mingru": (rnnkit.MinGRU, {}),
    "mingru_log": (rnnkit.MinGRU, {"log_space": True}),
    "minlstm": (rnnkit.MinLSTM, {}),
    "minlstm_log": (rnnkit.MinLSTM, {"log_space": True}),
    "qrnn1": (rnnkit.QRNN, {"window": 1}),
    "qrnn2": (rnnkit.QRNN, {"window": 2}),
    "lru": (rnnkit.LRU, {}),
}


def make(name: str, I: int = 3, H: int = 4, seed: int = 0, **kw):
    cls, opts = LAYERS[name]
    torch.manual_seed(seed)
    m = cls(I, H, **opts, **kw)
    if name == "lru":  # spread |λ| so the profile is not one flat line
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n.startswith("nu_log"):
                    p.copy_(torch.linspace(-3.0, 0.5, p.numel()))
    return m


def _g(v):
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def paper_coefficients(m, p, x):
    """``a_t, b_t`` ``(T, B, S)`` and the read-out ``y_t = r(s_t, t)`` of one forward layer,
    straight from the papers (Feng et al. 2024; Bradbury et al. 2017; Orvieto et al. 2023)."""
    if isinstance(m, rnnkit.LRU):
        lam = torch.exp(-torch.exp(p["nu_log"]) + 1j * p["theta"])
        gamma = torch.sqrt(1 - lam.abs() ** 2)
        Bm, C = torch.complex(p["B_re"], p["B_im"]), torch.complex(p["C_re"], p["C_im"])
        b = gamma * (x.to(Bm.dtype) @ Bm.t())
        Dm = p["D"]
        return (
            lam.expand_as(b),
            b,
            lambda s, t: (s @ C.t()).real + (x[t] * Dm if Dm.dim() == 1 else x[t] @ Dm.t()),
        )
    if isinstance(m, rnnkit.QRNN):
        xs = torch.cat([torch.cat([torch.zeros_like(x[:1]), x[:-1]]), x], -1) if m.window == 2 else x
        Z, Fg, O = (xs @ p["weight_ih"].t() + p["bias_ih"]).chunk(3, -1)
        Z, Fg, O = torch.tanh(Z), torch.sigmoid(Fg), torch.sigmoid(O)
        return Fg, (1 - Fg) * Z, lambda s, t: O[t] * s
    u = x @ p["weight_ih"].t() + p["bias_ih"]
    if isinstance(m, rnnkit.MinLSTM):
        kf, ki, v = u.chunk(3, -1)
        f, i = torch.sigmoid(kf), torch.sigmoid(ki)
        a, w = f / (f + i), i / (f + i)
    else:
        k, v = u.chunk(2, -1)
        a, w = 1 - torch.sigmoid(k), torch.sigmoid(k)
    return a, w * (_g(v) if m.log_space else v), lambda s, t: s


def reference_norms(m, x, kind, reverse_too=False):
    """‖∂L/∂s_t‖ of a one-layer module (both directions when bidirectional) by autograd."""
    outs, deltas = [], []
    for d in range(2 if reverse_too else 1):
        p = m.layer_params(0, d)
        xd = x.flip(0) if d else x
        a, b, read = paper_coefficients(m, p, xd)
        s = torch.zeros_like(b[0])
        dl = [torch.zeros_like(b[0], requires_grad=True) for _ in range(len(x))]
        ys = []
        for t in range(len(x)):
            s = a[t] * s + b[t] + dl[t]
            ys.append(read(s, t))
        y = torch.stack(ys)
        outs.append(y.flip(0) if d else y)
        deltas.append(dl[::-1] if d else dl)
    L = readout_loss(torch.cat(outs, -1), kind, 0)
    grads = torch.autograd.grad(L, [t for dl in deltas for t in dl])
    T = len(x)
    return [np.array([float(g.abs().norm()) for g in grads[d * T : (d + 1) * T]]) for d in range(len(deltas))]


@pytest.mark.parametrize("name,kind", list(itertools.product(LAYERS, ["last", "per_step"])))
def test_gradient_flow_equals_direct_autograd(name, kind):
    m = make(name)
    x = torch.randn(7, 2, 3, generator=torch.Generator().manual_seed(1))
    gf = gradient_flow(m, x, loss=kind)
    (ref,) = reference_norms(m, x, kind)
    state = "c" if name.startswith("qrnn") else "h"
    assert gf.labels == ["l0"] and list(gf.norms["l0"]) == [state] and gf.state("l0") == state
    np.testing.assert_allclose(gf.norms["l0"][state], ref, rtol=1e-10, atol=1e-14)
    assert np.all(ref > 0) and (kind == "per_step" or ref[0] < ref[-1])  # the profile is not flat
    assert np.isfinite(gf.per_step_factor())


@pytest.mark.parametrize("name", ["mingru", "minlstm_log", "qrnn2", "lru"])
def test_gradient_flow_bidirectional_equals_direct_autograd(name):
    m = make(name, bidirectional=True)
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(2))
    gf = gradient_flow(m, x, loss="per_step")
    fwd, rev = reference_norms(m, x, "per_step", reverse_too=True)
    st = gf.state("l0")
    np.testing.assert_allclose(gf.norms["l0"][st], fwd, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gf.norms["l0_reverse"][st], rev, rtol=1e-10, atol=1e-14)
    assert gf.reverse == {"l0": False, "l0_reverse": True}


CASES = list(itertools.product(["mingru", "minlstm_log", "qrnn1", "qrnn2", "lru"], [1, 2], [False, True]))


def _leaves(state):
    out = []
    map_tensors(out.append, state)
    return out


@pytest.mark.parametrize("name,L,bidir", CASES)
def test_replay_matches_layer_forward_and_gradients(name, L, bidir):
    batch_first = L == 2
    m = make(name, num_layers=L, bidirectional=bidir, batch_first=batch_first)
    x = torch.randn((2, 5, 3) if batch_first else (5, 2, 3))
    S, D = m.state_size, 2 if bidir else 1
    h0 = torch.randn(L * D, 2, S, dtype=m.state_dtype)
    h0 = h0.abs() + 0.1 if name.endswith("_log") else h0  # the log-space form needs h0 > 0
    ref, got = m(x, h0), replay(m, x, h0)
    tr = got[2]
    ref, got = _leaves(ref), _leaves(got[:2])  # QRNN window=2: h_n = (c, x_prevs), as forward's
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
    ref, got = zip(*[(a, b) for a, b in zip(ref, got) if a.requires_grad])  # x_prev_0 = x[-1]: no grad
    assert len(tr.states) == L and len(tr.states[0]) == D and len(tr.states[0][0]) == 5
    w = [torch.randn_like(t) for t in ref]
    ga = torch.autograd.grad(ref, [*m.parameters()], w)
    gb = torch.autograd.grad(got, [*m.parameters()], w)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


def test_replay_unbatched_and_errors():
    m = make("mingru")
    x = torch.randn(5, 3)
    torch.testing.assert_close(replay(m, x)[0], m(x)[0])
    with pytest.raises(ValueError, match="input_size=3"):
        replay(m, torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match="PackedSequence"):
        gradient_flow(m, nn.utils.rnn.pack_sequence([torch.randn(3, 3)]))
    with pytest.raises(ValueError, match=r"\(1, 2, 4\)"):
        replay(m, torch.randn(5, 2, 3), torch.zeros(1, 3, 4))


def test_gradient_flow_inside_a_model():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = make("qrnn2", num_layers=2, batch_first=True)
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    net = Net()
    x = torch.randn(2, 6, 3)
    gf = gradient_flow(net, x, lambda y: y[:, -1].sum())
    assert gf.labels == ["rnn.l0", "rnn.l1"]
    direct = gradient_flow(net.rnn, x, lambda out: net.head(out[0])[:, -1].sum())
    np.testing.assert_allclose(gf.norms["rnn.l0"]["c"], direct.norms["l0"]["c"], rtol=1e-12)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("name", ["mingru", "minlstm", "qrnn2"])
def test_step_jacobian_is_diag_decay_and_matches_autograd(name):
    m = make(name, num_layers=2)
    x = torch.randn(5, 2, 3)
    jac, names = step_jacobians(m, x, layer=1, sample=1)
    p, inp = m.layer_params(1), replay(m, x)[2].inputs[1][:, 1]
    xs = torch.cat([torch.cat([torch.zeros_like(inp[:1]), inp[:-1]]), inp], -1) if name == "qrnn2" else inp
    s = torch.randn(1, 4)
    for t in range(5):
        J = torch.autograd.functional.jacobian(lambda s_, t=t: m.step_layer(p, xs[t : t + 1], s_)[1], s)[
            0, :, 0
        ]
        np.testing.assert_allclose(jac[t], J.numpy(), atol=1e-14)
    assert names == (("c",) if name == "qrnn2" else ("h",))
    js = jacobian_spectrum(m, x, layer=1, sample=1)
    a = np.stack([np.diag(j) for j in jac])
    np.testing.assert_allclose(js.singular_values, -np.sort(-np.abs(a), 1))
    np.testing.assert_allclose(js.product_norms, np.abs(np.cumprod(a[::-1], 0)).max(1))


def test_lru_spectrum_is_lambda():
    m = make("lru", bidirectional=True)
    ev = recurrent_eigenvalues(m)
    assert set(ev) == {"l0", "l0_reverse"}
    p = m.layer_params(0, 1)
    lam = torch.exp(-torch.exp(p["nu_log"]) + 1j * p["theta"]).detach().numpy()
    np.testing.assert_allclose(np.sort_complex(ev["l0_reverse"]["λ"]), np.sort_complex(lam))
    assert np.all(np.diff(np.abs(ev["l0"]["λ"])) <= 0)
    x = torch.randn(4, 2, 3)
    js = jacobian_spectrum(m, x, direction=1)
    np.testing.assert_allclose(js.singular_values[2], np.sort(np.abs(lam))[::-1])
    ds = decay_spectrum(m, x)
    assert ds.name == "λ" and ds.decays["l0_reverse"].shape == (4, 2, 4)
    np.testing.assert_allclose(ds.decays["l0_reverse"][3, 1], lam)
    with pytest.raises(ValueError, match="diag\\(λ\\)"):
        recurrent_matrices(m)


@pytest.mark.parametrize("name", ["mingru", "mingru_log", "minlstm", "minlstm_log", "qrnn1"])
def test_decay_spectrum_from_the_equations(name):
    m = make(name, num_layers=2)
    x = torch.randn(6, 3, 3)
    ds = decay_spectrum(m, x)
    a, _, _ = paper_coefficients(m, m.layer_params(0), x)
    np.testing.assert_allclose(ds.decays["l0"], a.detach().numpy(), rtol=1e-12)
    assert ds.labels == ["l0", "l1"] and ds.decays["l1"].shape == (6, 3, 4)
    q = ds.modulus_quantiles("l1", (0.0, 1.0))
    np.testing.assert_allclose(q, [np.abs(ds.decays["l1"]).min(), np.abs(ds.decays["l1"]).max()])
    np.testing.assert_allclose(ds.timescales(), -1 / np.log(ds.decays["l0"]))
    with pytest.raises(ValueError, match="decay_spectrum"):
        recurrent_eigenvalues(m)
    with pytest.raises(ValueError, match="no fixed recurrent matrix"):
        recurrent_matrices(m)


@pytest.mark.parametrize("name", ["mingru", "qrnn2"])
def test_step_jacobians_of_the_reverse_direction_are_in_processing_order(name):
    """direction=1's J_n = diag(a) of the n-th step processed, time T-1-n: the reverse direction is
    the forward recurrence on the flipped input (x_{t+1}, then x_T = 0 for the QRNN's window).
    Returning them in time order survived the tests, which read only the forward direction."""
    m = make(name, bidirectional=True)
    x = torch.randn(5, 2, 3)
    jac, _ = step_jacobians(m, x, direction=1, sample=1)
    a, _, _ = paper_coefficients(m, m.layer_params(0, 1), x.flip(0))
    np.testing.assert_allclose(np.stack([np.diag(j) for j in jac]), a[:, 1].detach().numpy(), rtol=1e-12)


def test_lru_eigenvalues_are_sorted_and_quantiles_are_of_the_modulus():
    """recurrent_eigenvalues sorts λ by decreasing modulus, and modulus_quantiles reads |λ| of the
    complex decays: with make()'s |λ| already falling along the state an unsorted λ survived, and
    so did quantiles of Re λ (here |λ| from 0.999 down to 0.19, three phases past π/2)."""
    m = make("lru")
    with torch.no_grad():
        m.nu_log_l0.copy_(torch.tensor([-1.0, -7.0, 0.5, -3.0]))
        m.theta_l0.copy_(torch.tensor([2.0, 3.0, 0.1, 1.9]))
    lam = torch.exp(-torch.exp(m.nu_log_l0) + 1j * m.theta_l0).detach().numpy()
    want = lam[np.argsort(-np.abs(lam))]
    np.testing.assert_allclose(recurrent_eigenvalues(m)["l0"]["λ"], want, rtol=1e-12)
    ds = decay_spectrum(m, torch.randn(4, 2, 3))
    q = ds.modulus_quantiles("l0", (0.0, 0.5, 1.0))
    np.testing.assert_allclose(q, np.quantile(np.abs(lam), (0.0, 0.5, 1.0)), rtol=1e-12)


def test_decay_spectrum_rejects_classic_layers():
    with pytest.raises(ValueError, match="jacobian_spectrum or recurrent_eigenvalues"):
        decay_spectrum(rnnkit.LSTM(3, 4), torch.randn(5, 2, 3))


def test_activity_gates_rebuild_the_states():
    x = torch.randn(6, 2, 3)
    m = make("mingru")
    (act,) = activity(m, x, sample=1)
    k, v = (x[:, 1] @ m.weight_ih_l0.t() + m.bias_ih_l0).chunk(2, -1)
    z, h = act.gates["z"], act.states["h"]
    np.testing.assert_allclose(z, torch.sigmoid(k).detach().numpy(), rtol=1e-12)
    prev = np.vstack([np.zeros((1, 4)), h[:-1]])
    np.testing.assert_allclose(h, (1 - z) * prev + z * v.detach().numpy(), atol=1e-12)

    (act,) = activity(make("minlstm"), x)
    np.testing.assert_allclose(act.gates["f"] + act.gates["i"], 1.0, rtol=1e-12)

    m = make("qrnn2", bidirectional=True)
    acts = activity(m, x)
    assert [a.label for a in acts] == ["l0", "l0_reverse"]
    for a, y in zip(acts, m(x)[0][:, 0].chunk(2, -1)):
        assert set(a.gates) == {"f", "o"} and list(a.states) == ["h", "c"]
        np.testing.assert_allclose(a.states["h"], y.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(a.states["h"], a.gates["o"] * a.states["c"], atol=1e-12)

    (act,) = activity(make("lru"), x)
    assert act.gates == {} and "no gates" in act.note and list(act.states) == ["y", "Re h", "Im h"]
    with pytest.raises(ValueError, match="sample must be"):
        activity(m, x, sample=2)


def test_memory_horizon_accepts_the_parallel_layers():
    from rnnkit.diagnostics import Budget, memory_horizon, parse_variant

    v = parse_variant("w1=qrnn:window=1")
    assert (v.label, v.family, v.options) == ("w1", "qrnn", {"window": 1})
    b = Budget(hidden_size=4, steps=2, batch_size=4, eval_every=1, eval_size=8, lags=(2,))
    r = memory_horizon(["mingru", "minlstm", v, "lru"], tasks=["plus_one"], budget=b)
    assert set(r.horizon) == {"mingru", "minlstm", "w1", "lru"} and len(r.rows) == 4


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-layer", "autocast"])
@pytest.mark.parametrize("name", ["MinGRU", "QRNN"])
def test_decay_spectrum_of_a_half_precision_layer(name, autocast):
    """A bfloat16 layer (or a float32 one under bfloat16 autocast) has bfloat16 decays, which
    decay_spectrum and the step Jacobians handed to numpy as they were: a TypeError (numpy has
    no bfloat16), where the gradient flow and the activity of the same layer work. Now in
    float64, as the other diagnostics' arrays; the same values as the decays' own."""
    torch.manual_seed(0)
    m = getattr(rnnkit, name)(3, 4, num_layers=2, dtype=torch.float32 if autocast else torch.bfloat16)
    x = torch.randn(5, 2, 3).to(torch.float32 if autocast else torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ds = decay_spectrum(m, x)
        jac, _ = step_jacobians(m, x, layer=1, sample=1)
        a = layer_decay(m, m.layer_params(0), x, False)
    assert a.dtype == torch.bfloat16 and ds.decays["l0"].dtype == jac.dtype == np.float64
    np.testing.assert_array_equal(ds.decays["l0"], a.double().detach().numpy())
    assert jac.shape == (5, 4, 4)
