"""gradient_flow and the replay it stands on, against torch.nn and autograd."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.diagnostics import gradient_flow, readout_loss, replay

from .cells import LinearCell, orthogonal, stack

MODES = {"RNN": (rnnkit.RNN, nn.RNN), "LSTM": (rnnkit.LSTM, nn.LSTM), "GRU": (rnnkit.GRU, nn.GRU)}


def _flat(res):
    out, hn = res[0], res[1]
    return [out, *(hn if isinstance(hn, tuple) else (hn,))]


@pytest.mark.parametrize(
    "mode,which,L,bidir,batch_first",
    list(itertools.product(MODES, [0, 1], [1, 2], [False, True], [False, True])),
)
def test_replay_matches_layer(mode, which, L, bidir, batch_first):
    torch.manual_seed(0)
    m = MODES[mode][which](3, 4, num_layers=L, bidirectional=bidir, batch_first=batch_first)
    x = torch.randn((2, 5, 3) if batch_first else (5, 2, 3))
    D = 2 if bidir else 1
    h0 = torch.randn(L * D, 2, 4)
    hx = (h0, torch.randn(L * D, 2, 4)) if mode == "LSTM" else h0
    ref, got = _flat(m(x, hx)), _flat(replay(m, x, hx))
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
    w = [torch.randn_like(t) for t in ref]
    ga = torch.autograd.grad(ref, list(m.parameters()), w)
    gb = torch.autograd.grad(got, list(m.parameters()), w)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


def _single_layers(m, mode):
    """The stack as separate one-layer torch.nn modules with the same weights (the oracle)."""
    layers = []
    for k in range(m.num_layers):
        n_in = m.input_size if k == 0 else m.hidden_size
        one = MODES[mode][1](n_in, m.hidden_size)
        with torch.no_grad():
            for name, _ in one.named_parameters():
                getattr(one, name).copy_(getattr(m, name.replace("_l0", f"_l{k}")))
        layers.append(one)
    return layers


def _oracle(layers, x, loss, lstm):
    """∂L/∂h_t (and ∂L/∂c_t) by making the state at step t a leaf and recomputing the rest of
    the network from it with torch.nn's own kernels. ``h_t`` is a leaf with ``c_t`` fixed;
    for ``c_t`` the leaf also feeds ``h_t = o_t ⊙ tanh(c_t)`` (o_t from the paper's equation)."""
    T = x.shape[0]
    norms = {}
    for k, layer in enumerate(layers):
        inp = x
        with torch.no_grad():
            for j in range(k):
                inp = layers[j](inp)[0]

        def rest(t, out_a, h, c, layer=layer, inp=inp, k=k):
            pieces = [out_a[:t].detach(), h]
            if t < T - 1:
                pieces.append(layer(inp[t + 1 :], (h, c) if lstm else h)[0])
            out = torch.cat(pieces)
            for j in range(k + 1, len(layers)):
                out = layers[j](out)[0]
            return loss(out)

        for t in range(T):
            out_a, st = layer(inp[: t + 1])
            h, c = (st[0].detach(), st[1].detach()) if lstm else (st.detach(), None)
            h.requires_grad_()
            (g,) = torch.autograd.grad(rest(t, out_a, h, c), [h])
            norms.setdefault((f"l{k}", "h"), np.zeros(T))[t] = float(g.norm())
            if lstm:
                c.requires_grad_()
                h_prev = out_a[t - 1 : t].detach() if t else torch.zeros_like(h)
                pre = inp[t] @ layer.weight_ih_l0.t() + layer.bias_ih_l0 + h_prev[0] @ layer.weight_hh_l0.t()
                o = torch.sigmoid((pre + layer.bias_hh_l0).chunk(4, -1)[3])
                h_of_c = o * torch.tanh(c)
                torch.testing.assert_close(h_of_c.detach(), h.detach())
                (g,) = torch.autograd.grad(rest(t, out_a, h_of_c, c), [c])
                norms.setdefault((f"l{k}", "c"), np.zeros(T))[t] = float(g.norm())
    return norms


LOSSES = {
    "last": lambda o: readout_loss(o, "last", 0, seed=3),
    "per_step": lambda o: readout_loss(o, "per_step", 0, seed=3),
    "custom": lambda o: (torch.tanh(o) ** 2 * torch.linspace(-1, 1, o.shape[-1])).sum(),
}


@pytest.mark.parametrize("mode,which,loss", list(itertools.product(MODES, [0, 1], LOSSES)))
def test_gradient_flow_matches_autograd_oracle(mode, which, loss):
    torch.manual_seed(1)
    m = MODES[mode][which](2, 3, num_layers=2)
    x = torch.randn(6, 2, 2)
    if loss == "custom":
        gf = gradient_flow(m, x, lambda res: LOSSES["custom"](res[0]))
    else:
        gf = gradient_flow(m, x, loss=loss, seed=3)
    assert gf.labels == ["l0", "l1"] and gf.kind == loss
    ref = _oracle(_single_layers(m, mode), x, LOSSES[loss], mode == "LSTM")
    for (label, name), norms in ref.items():
        np.testing.assert_allclose(gf.norms[label][name], norms, rtol=1e-10, atol=1e-14)
    assert gf.norms["l1"]["h"][-1] > 0 and gf.norms["l0"]["h"][0] > 0
    # the default label of per_step_factor is the top layer's (forward) direction
    assert gf.per_step_factor() == gf.per_step_factor("l1") != gf.per_step_factor("l0")


def test_gradient_flow_inside_a_model_uses_hooks():
    torch.manual_seed(2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnnkit.LSTM(2, 3, batch_first=True)
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            return self.head(self.rnn(x)[0]).sum()

    net = Net()
    x = torch.randn(2, 5, 2)
    gf = gradient_flow(net, x, lambda y: y)
    direct = gradient_flow(net.rnn, x, lambda res: net.head(res[0]).sum())
    assert gf.labels == ["rnn.l0"]
    np.testing.assert_allclose(gf.norms["rnn.l0"]["h"], direct.norms["l0"]["h"], rtol=1e-12)
    np.testing.assert_allclose(gf.norms["rnn.l0"]["c"], direct.norms["l0"]["c"], rtol=1e-12)
    assert all(p.grad is None for p in net.parameters())  # the user's .grad is untouched
    with pytest.raises(ValueError, match="loss_fn is required"):
        gradient_flow(net, x)


def _linear_stack(W, T=12, B=3, H=5):
    m = stack(LinearCell, 2, H)
    with torch.no_grad():
        m.weight_hh_l0.copy_(W)
    return m, torch.randn(T, B, 2)


@pytest.mark.parametrize("scale", [1.0, 0.5, 1.5])
def test_orthogonal_linear_recurrence_scales_gradient_by_exactly_the_scale(scale):
    """h_t = W_ih x_t + s Q h_{t-1}: ∂L/∂h_t = (s Qᵀ)^(T-1-t) ∂L/∂h_(T-1), so the norm changes
    by exactly s per step (constant for an orthogonal W_hh)."""
    m, x = _linear_stack(scale * orthogonal(5))
    gf = gradient_flow(m, x, loss="last")
    n = gf.norms["l0"]["h"]
    np.testing.assert_allclose(n[:-1] / n[1:], scale, rtol=1e-10)
    assert gf.per_step_factor() == pytest.approx(scale, rel=1e-9)
    # a non-orthogonal matrix with the same spectral radius does not keep norms constant
    if scale == 1.0:
        m2, _ = _linear_stack(torch.diag(torch.tensor([1.0, 0.2, 0.2, 0.2, 0.2])) @ orthogonal(5, 1))
        n2 = gradient_flow(m2, x).norms["l0"]["h"]
        assert n2[0] < 0.5 * n2[-1]


def test_lstm_cell_state_carries_gradient_unchanged_with_open_forget_gate():
    """f = 1, i = 0, W_hh = 0: c_t = c_(t-1), so ‖∂L/∂c_t‖ is constant while ∂L/∂h_t = 0
    before the last step (no recurrent path through h)."""
    H = 3
    m = rnnkit.LSTM(2, H)
    with torch.no_grad():
        m.weight_hh_l0.zero_()
        m.bias_ih_l0.zero_()
        m.bias_ih_l0[:H] = -60.0  # σ(-60) = 9e-27: input gate shut
        m.bias_ih_l0[H : 2 * H] = 60.0  # σ(60) = 1.0 in float64: forget gate open
    x = torch.randn(8, 2, 2)
    gf = gradient_flow(m, x, loss="last", hx=(torch.zeros(1, 2, H), torch.randn(1, 2, H)))
    c = gf.norms["l0"]["c"]
    np.testing.assert_allclose(c, c[-1], rtol=1e-12)
    assert c[-1] > 0 and np.all(gf.norms["l0"]["h"][:-1] == 0)


def test_distance_and_reverse_direction():
    m = rnnkit.RNN(2, 3, bidirectional=True)
    gf = gradient_flow(m, torch.randn(4, 1, 2), loss="per_step")
    assert gf.reverse == {"l0": False, "l0_reverse": True}
    assert gf.distance("l0").tolist() == [3, 2, 1, 0] and gf.distance("l0_reverse").tolist() == [0, 1, 2, 3]
    last = gradient_flow(m, torch.randn(4, 1, 2), loss="last")
    # the reverse direction's output at the last step is its first state: nothing earlier matters
    assert last.norms["l0_reverse"]["h"][:-1].tolist() == [0, 0, 0] and last.norms["l0_reverse"]["h"][-1] > 0
    with pytest.raises(ValueError, match="loss must be one of"):
        gradient_flow(m, torch.randn(4, 1, 2), loss="mean")


def test_replay_batch_norm_counts_steps_per_layer_direction():
    """Recurrent batch norm keeps statistics per step, counted afresh in every layer-direction."""
    torch.manual_seed(0)
    m = rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, norm="batch").double()
    for _ in range(3):  # distinct running statistics per step
        m(torch.randn(5, 8, 3, dtype=torch.float64) * 2 + 1)
    m.eval()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for a, b in zip(_flat(m(x)), _flat(replay(m, x))):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


def test_diagnostics_leave_batch_norm_statistics_alone():
    """In training mode the replay normalizes with the batch's statistics and updated the running
    ones too: gradient_flow, activity or jacobian_spectrum of a training model moved its batch-norm
    statistics (inside a model, twice: its forward and the replay). They are left as they were, and
    the measurement (of training mode) is unchanged."""
    from rnnkit.diagnostics import activity, jacobian_spectrum

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.bn = rnnkit.LSTM(3, 4, num_layers=2, norm="batch"), nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(self.rnn(x)[0][-1])

    torch.manual_seed(0)
    net = Net().train()
    x = torch.randn(5, 3, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gf = gradient_flow(net.rnn, x)
    for diagnose in (
        lambda: gradient_flow(net.rnn, x),
        lambda: activity(net.rnn, x),
        lambda: jacobian_spectrum(net.rnn, x),
        lambda: gradient_flow(net, x, lambda y: y.square().sum()),
    ):
        diagnose()
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    assert net.training and net.rnn.training
    np.testing.assert_array_equal(gradient_flow(net.rnn, x).norms["l1"]["h"], gf.norms["l1"]["h"])


def test_diagnostics_restore_a_buffer_the_forward_replaces():
    """A forward may replace a buffer rather than update it in place (``self.n = self.n + 1``, a
    counter): the copy-back went to the old tensor, which the module no longer held, and the
    buffer kept the diagnostic's value. The module's own tensor is put back."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnnkit.LSTM(3, 4)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls = self.calls + 1
            return self.rnn(x)[0]

    net = Net().train()
    calls = net.calls
    gradient_flow(net, torch.randn(5, 2, 3), lambda y: y.sum())
    assert net.calls is calls and net.calls.item() == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: rnnkit.GRU(3, 4, num_layers=2, dropout=0.5, zoneout=0.3),
        lambda: rnnkit.QRNN(3, 4, zoneout=0.3),
    ],
    ids=["gru", "qrnn"],
)
def test_diagnostics_leave_the_random_state_alone(make):
    """In training mode the replay draws zoneout and dropout masks: every diagnostic advanced torch's
    global generator, so a diagnostic inside a training loop changed the rest of the run. The masks
    are drawn from a forked generator now; the model's mode is left as it was."""
    from rnnkit.diagnostics import activity, decay_spectrum, jacobian_spectrum

    torch.manual_seed(0)
    m = make().train()
    net = nn.Sequential(m)
    x = torch.randn(5, 2, 3)
    calls = [
        lambda: gradient_flow(m, x),
        lambda: activity(m, x),
        lambda: jacobian_spectrum(m, x),
        lambda: gradient_flow(nn.Sequential(nn.Dropout(0.5), m), x, lambda y: y[0].sum()),
        lambda: replay(m, x),
    ]
    if isinstance(m, rnnkit.QRNN):
        calls.append(lambda: decay_spectrum(m, x))
    for diagnose in calls:
        state = torch.get_rng_state()
        diagnose()
        assert torch.equal(torch.get_rng_state(), state)
        assert m.training and net.training


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU])
def test_replay_applies_zoneout(cls):
    """In evaluation zoneout mixes each state with the previous one: the replay must too."""
    torch.manual_seed(0)
    m = cls(3, 4, num_layers=2, bidirectional=True, zoneout=0.3).double().eval()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for a, b in zip(_flat(m(x)), _flat(replay(m, x))):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)
    gf = gradient_flow(m, x)  # the gradient through the mixed states: a unit keeps 0.3 of it per step
    assert np.all(gf.norms["l1"]["h"] > 0)


@pytest.mark.parametrize("reg", ["weight_drop", "recurrent_dropout", "locked_dropout"])
def test_training_mode_regularizers_not_replayed_warn_once(reg):
    """The replay runs the plain cell math without these; it used to measure that silently."""
    torch.manual_seed(0)
    m = rnnkit.LSTM(3, 4, num_layers=2, **{reg: 0.3}).train()
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # Python's own filter: once per call site
        for _ in range(3):
            gradient_flow(m, x)
    assert len(seen) == 1 and seen[0].category is UserWarning
    assert f"training mode with {reg}" in str(seen[0].message) and "model.eval()" in str(seen[0].message)
    with pytest.warns(UserWarning, match=rf"{reg}, which the step-by-step replay does not run"):
        replay(m, x)
    gradient_flow(m.eval(), x)  # evaluation: nothing to warn about (warnings are errors here)
    gradient_flow(rnnkit.LSTM(3, 4, num_layers=2, zoneout=0.3).train(), x)  # zoneout is replayed


@pytest.mark.parametrize(
    "cls,kw",
    [
        (rnnkit.GRU, {}),  # torch's GRU: float32 under the CPU's autocast
        (nn.GRU, {}),
        (rnnkit.GRU, {"reset_after": False}),
        (rnnkit.LSTM, {"norm": "layer"}),
        (rnnkit.RNN, {"norm": "layer", "zoneout": 0.2}),
    ],
    ids=["gru", "nn.gru", "cho-gru", "lstm-layer-norm", "rnn-layer-norm-zoneout"],
)
def test_replay_under_autocast_runs_as_the_layer(cls, kw):
    """Under autocast the replay ran the cells' steps with autocast on: a GRU's step crashed
    (torch.lerp of a bfloat16 and a float32 tensor), a layer-norm LSTM's output was 0.13 off the
    layer's (layer norm in bfloat16). The layer runs these in its parameters' dtype with autocast
    off, and so does the replay now: the layer's numbers, and gradient_flow works. torch's GRU
    (its output float32 under the CPU's autocast, its matrix products bfloat16) is replayed in
    float32: close to it, not equal."""
    torch.manual_seed(0)
    m = cls(3, 4, num_layers=2, dtype=torch.float32, **kw).eval()
    x = torch.randn(5, 2, 3, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, got = _flat(m(x)), _flat(replay(m, x, track=True))
        gf = gradient_flow(m, x, lambda y: y[0].float().sum())
    for a, b in zip(ref, got, strict=True):
        assert b.dtype == a.dtype == torch.float32
        tol = 2e-2 if cls is nn.GRU or not kw else 1e-5
        torch.testing.assert_close(b, a, atol=tol, rtol=tol)
    assert np.isfinite(gf.norms["l1"]["h"]).all()


@pytest.mark.parametrize("cls, zoneout", [(rnnkit.LSTM, (0.3, 0.2)), (rnnkit.GRU, 0.3)])
def test_replay_in_training_with_dropout_and_zoneout_is_the_layer(cls, zoneout):
    """In training mode with both inter-layer dropout and zoneout the replay drew layer 0's
    zoneout masks, then its dropout mask, then layer 1's zoneout masks, where the layer draws
    every zoneout mask first: from one seed its numbers were another call's, not "exactly what
    module(x) returns". It draws them in the layer's order now."""
    torch.manual_seed(0)
    m = cls(3, 4, num_layers=3, bidirectional=True, dropout=0.5, zoneout=zoneout).double().train()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    torch.manual_seed(1)
    got = replay(m, x)  # (leaves torch's generator as it found it)
    want = m(x)
    for a, b in zip(_flat(want), _flat(got[:2])):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("time_dim", [2, -1, 3, True])
def test_readout_loss_time_dim_is_checked(time_dim):
    """time_dim=3 of a (T, B, F) output failed on "tuple index out of range", -1 (the features) on a
    matmul's "size mismatch" and True in select(); each is named now with the dimensions allowed."""
    out = torch.randn(5, 3, 4)
    match = rf"time_dim must be an integer in \[0, 2\) \(a dimension of the output \(5, 3, 4\) .* {time_dim}$"
    with pytest.raises(ValueError, match=match):
        readout_loss(out, "last", time_dim)


def test_readout_loss_needs_an_output_with_time_and_features():
    match = r"expected an output \(T, F\), \(T, B, F\) or \(B, T, F\), got shape \(4,\)"
    with pytest.raises(ValueError, match=match):
        readout_loss(torch.randn(4), "last", 0)


@pytest.mark.parametrize(
    "measure",
    [
        "gradient_flow",
        "jacobian_spectrum",
        "step_jacobians",
        "activity",
        "replay",
    ],
)
def test_a_model_that_is_no_module_is_named(measure):
    """gradient_flow(None, x) & co. failed on "'NoneType' object has no attribute 'parameters'"."""
    import rnnkit.diagnostics as dg

    with pytest.raises(TypeError, match=r"expected a torch.nn.Module \(.*\), got NoneType$"):
        getattr(dg, measure)(None, torch.randn(5, 3, 4))
