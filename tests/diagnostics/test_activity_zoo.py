"""Activity of the zoo's variant cells: the cells' ``gates()`` hooks, checked by rebuilding the
layer's own states and outputs from the reported gates with each variant's equations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rnnkit
from rnnkit.cells import StepContext
from rnnkit.cells.norm import EPS
from rnnkit.diagnostics import activity, standard_gates

T, B, I, H = 5, 3, 2, 3

LSTM_VARIANTS = {
    "peephole": {"peephole": True},
    "peephole_proj": {"peephole": True, "proj_size": 2},
    "layer_norm": {"norm": "layer"},
    "batch_norm": {"norm": "batch", "max_len": 3},  # steps 3, 4 reuse slot 2's statistics
    "nig": {"input_gate": False},
    "nfg": {"forget_gate": False},
    "nog": {"output_gate": False},
    "niaf": {"input_activation": False},
    "noaf": {"output_activation": False},
    "cifg": {"coupled_gates": True, "peephole": True},
    "fgr": {"full_gate_recurrence": True, "peephole": True},
    "forget_bias": {"forget_bias": 1.0},
}
GRU_VARIANTS = {
    "reset_before": {"reset_after": False},
    "layer_norm": {"norm": "layer"},
    "mut1": {"variant": "mut1"},
    "mut2": {"variant": "mut2"},
    "mut3": {"variant": "mut3"},
}


def _randomize(m: torch.nn.Module) -> None:
    """Nonzero peepholes, gains and shifts, per-step running statistics: every term counts."""
    with torch.no_grad():
        for name, t in [*m.named_parameters(), *m.named_buffers()]:
            if "peephole" in name or "_ln_" in name or "_bn_" in name or "running_mean" in name:
                t.copy_(torch.randn_like(t) * 0.5 + (1.0 if name.startswith("weight_") else 0.0))
            elif "running_var" in name:
                t.copy_(torch.rand_like(t) + 0.5)


def _prev(seq: np.ndarray, first: np.ndarray, reverse: bool) -> np.ndarray:
    """The state before each step ``(T, S)``: ``first`` then ``seq`` shifted in the step order."""
    return np.concatenate([seq[1:], first[None]]) if reverse else np.concatenate([first[None], seq[:-1]])


def _all_samples(m, x, hx):
    return [activity(m, x, sample=s, hx=hx) for s in range(B)]


def _lstm_cn(m, k, d, c_all, reverse):
    """The normalized cell state that ``h`` reads, ``(B, T, H)`` from every sample's ``c``."""
    p = {n: v.detach().numpy() for n, v in m.layer_params(k, d).items()}
    cell = m.cells[k]
    if cell.norm == "layer":
        return F.layer_norm(torch.from_numpy(c_all), (H,), *(torch.from_numpy(p[n]) for n in
                            ("weight_ln_c", "bias_ln_c")), EPS).numpy()  # fmt: skip
    if cell.norm != "batch":
        return c_all
    n_steps = np.arange(T)[::-1] if reverse else np.arange(T)  # steps taken in this direction
    slots = np.minimum(n_steps, p["running_mean_c"].shape[0] - 1)
    if m.training:
        mean, var = c_all.mean(0, keepdims=True), c_all.var(0, keepdims=True)
    else:
        mean, var = p["running_mean_c"][slots], p["running_var_c"][slots]
    return (c_all - mean) / np.sqrt(var + EPS) * p["weight_bn_c"] + p["bias_bn_c"]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(LSTM_VARIANTS))
def test_lstm_variant_gates_rebuild_the_layer(name, training):
    """Every variant of both directions of both layers: ``c_t = f ⊙ c_{t-1} + i ⊙ g`` (a removed
    gate is 1) and ``h_t = o ⊙ act(norm(c_t))`` (``W_hr`` with a projection), the top layer's
    ``h`` the layer's own output, and the running statistics untouched."""
    opts = dict(LSTM_VARIANTS[name])
    torch.manual_seed(0)
    m = rnnkit.LSTM(I, H, num_layers=2, bidirectional=True, **opts).train(training)
    _randomize(m)
    cell = m.cells[0]
    P = opts.get("proj_size") or H
    x = torch.randn(T, B, I) * (10 if name == "niaf" else 1)  # NIAF: a candidate beyond tanh's range
    hx = tuple(torch.randn(4, B, s) * 0.5 for s in cell.state_sizes())
    if cell.layout.full_recurrence:
        hx = (hx[0], hx[1], torch.rand_like(hx[2]))
    buffers = [b.clone() for b in m.buffers()]
    per_sample = _all_samples(m, x, hx)
    assert all(torch.equal(a, b) for a, b in zip(buffers, m.buffers(), strict=True))
    out = m(x, hx)[0].detach().numpy()
    want = {
        "nig": "fgo", "nfg": "igo", "nog": "ifg", "cifg": "ifgo",
    }.get(name, "ifgo")  # fmt: skip
    for idx in range(4):
        k, d = divmod(idx, 2)
        acts = [s[idx] for s in per_sample]
        assert all(set(a.gates) == set(want) and a.note == "" for a in acts)
        c_all = np.stack([a.states["c"] for a in acts])  # (B, T, H)
        cn = _lstm_cn(m, k, d, c_all, d == 1)
        for b, a in enumerate(acts):
            one = np.ones((T, H))
            i, f, o = (a.gates.get(n, one) for n in "ifo")
            g, c = a.gates["g"], a.states["c"]
            c_prev = _prev(c, hx[1][idx, b].numpy(), d == 1)
            np.testing.assert_allclose(c, f * c_prev + i * g, atol=1e-12)
            y = o * (np.tanh(cn[b]) if cell.output_activation else cn[b])
            if P != H:
                y = y @ m.layer_params(k, d)["weight_hr"].detach().numpy().T
            np.testing.assert_allclose(a.states["h"], y, atol=1e-12)
            if k == 1:
                np.testing.assert_allclose(a.states["h"], out[:, b, P * d : P * (d + 1)], atol=1e-12)
            if name == "cifg":
                np.testing.assert_allclose(i, 1 - f, atol=1e-15)
            if name == "fgr":  # the carried activations are the reported sigmoid gates
                np.testing.assert_allclose(a.states["gates"], np.concatenate([i, f, o], 1), atol=1e-15)
            if name == "niaf" and k == 0:  # no tanh: the candidate of the scaled input leaves [-1, 1]
                assert np.abs(g).max() > 1
            for n in set(want) & set("ifo"):
                assert np.all((a.gates[n] > 0) & (a.gates[n] < 1))


def _gru_n(m, k, d, x_k, r, h_prev):
    """The candidate from the paper's equation with the reported ``r`` (the input's part is the
    cell's ``project_input``: MUT1's ``tanh x``, its bias and projections)."""
    cell, p = m.cells[k], {n: v.detach() for n, v in m.layer_params(k, d).items()}
    xn = cell.project_input(p, torch.from_numpy(x_k))[:, 2 * H :].numpy()
    j = cell.hid.index("n")
    W, b = p["weight_hh"].numpy(), p["bias_hh"].numpy()
    if cell.norm == "layer":
        hh = F.layer_norm(torch.from_numpy(h_prev @ W.T), (3 * H,), p["weight_ln_hh"], p["bias_ln_hh"], EPS)
        return np.tanh(xn + r * (hh.numpy() + b)[:, 2 * H :])
    W_n, b_n = W[j * H : (j + 1) * H], b[j * H : (j + 1) * H]
    if cell.reset_after:
        return np.tanh(xn + r * (h_prev @ W_n.T + b_n))
    return np.tanh(xn + (r * h_prev) @ W_n.T + b_n)


@pytest.mark.parametrize("name", list(GRU_VARIANTS))
def test_gru_variant_gates_rebuild_the_layer(name):
    """``h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}`` (torch's form) or ``z ⊙ n + (1 - z) ⊙ h_{t-1}``
    (MUT1-3: z gates the candidate), ``n`` from the variant's equation with the reported ``r``,
    for both directions of both layers; the top layer's ``h`` is the layer's output."""
    torch.manual_seed(0)
    m = rnnkit.GRU(I, H, num_layers=2, bidirectional=True, **GRU_VARIANTS[name])
    _randomize(m)
    x, h0 = torch.randn(T, B, I), torch.randn(4, B, H) * 0.5
    out = m(x, h0)[0].detach().numpy()
    for b, acts in enumerate(_all_samples(m, x, h0)):
        for idx, a in enumerate(acts):
            k, d = divmod(idx, 2)
            assert set(a.gates) == set("rzn") and a.note == ""
            r, z, n = (a.gates[g] for g in "rzn")
            h = a.states["h"]
            h_prev = _prev(h, h0[idx, b].numpy(), d == 1)
            if m.cells[k].variant is None:
                np.testing.assert_allclose(h, (1 - z) * n + z * h_prev, atol=1e-12)
            else:
                np.testing.assert_allclose(h, z * n + (1 - z) * h_prev, atol=1e-12)
            x_k = x[:, b].numpy() if k == 0 else np.concatenate([acts[0].states["h"], acts[1].states["h"]], 1)
            np.testing.assert_allclose(n, _gru_n(m, k, d, x_k, r, h_prev), atol=1e-12)
            if k == 1:
                np.testing.assert_allclose(h, out[:, b, H * d : H * (d + 1)], atol=1e-12)


def test_hook_matches_the_standard_replay_and_leaves_its_inputs_alone():
    """The plain cells' hooks give torch's gates (as the standard replay); a batch-norm cell's
    hook called in training mode moves no running statistic and leaves ``ctx`` as it was."""
    torch.manual_seed(0)
    for m in (rnnkit.LSTM(I, H, proj_size=2), rnnkit.GRU(I, H)):
        cell, p = m.cells[0], m.layer_params(0, 0)
        xp = cell.project_input(p, torch.randn(B, I))
        state = tuple(torch.randn(B, s) for s in cell.state_sizes())
        got, want = cell.gates(p, xp, state), standard_gates(cell, p, xp, state)
        assert got.keys() == want.keys()
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-15)
    m = rnnkit.LSTM(I, H, norm="batch")
    _randomize(m)
    cell, p = m.cells[0], m.layer_params(0, 0)
    buffers = [b.clone() for b in m.buffers()]
    ctx = StepContext(t=4, training=True, extra={"step": 4})
    with torch.no_grad():
        g = cell.gates(
            p, cell.project_input(p, torch.randn(B, I)), (torch.randn(B, H), torch.randn(B, H)), ctx
        )
    assert set(g) == set("ifgo") and ctx.extra == {"step": 4}
    assert all(torch.equal(a, b) for a, b in zip(buffers, m.buffers(), strict=True))
