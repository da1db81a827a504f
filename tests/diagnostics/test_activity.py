"""Activity: states and gates replayed from the parameters, checked against the layer's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.diagnostics import activity

from .cells import FakeLSTM, GatedLinearCell, LinearCell, stack


def _outputs(m, x, hx=None):
    out, hn = m(x, hx) if hx is not None else m(x)
    return out.detach().numpy()


@pytest.mark.parametrize("cls", [rnnkit.LSTM, nn.LSTM])
def test_lstm_gates_reproduce_the_states(cls):
    """c_t = f c_{t-1} + i g and h_t = o tanh(c_t) from the reported gates, and h equals the
    layer's own output (torch.nn's for nn.LSTM), for both directions of both layers."""
    torch.manual_seed(0)
    m = cls(2, 3, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 2)
    c0 = torch.randn(4, 2, 3)
    acts = activity(m, x, sample=1, hx=(torch.zeros(4, 2, 3), c0))
    out = _outputs(m, x, (torch.zeros(4, 2, 3), c0))
    assert [a.label for a in acts] == ["l0", "l0_reverse", "l1", "l1_reverse"]
    for idx, a in enumerate(acts):
        k, d = divmod(idx, 2)
        assert set(a.gates) == set("ifgo") and a.note == ""
        i, f, g, o = (a.gates[n] for n in "ifgo")
        c = a.states["c"]
        c_prev = (
            np.concatenate([c0[idx, 1][None].numpy(), c[:-1]])
            if d == 0
            else np.concatenate([c[1:], c0[idx, 1][None].numpy()])
        )
        np.testing.assert_allclose(c, f * c_prev + i * g, atol=1e-12)
        np.testing.assert_allclose(a.states["h"], o * np.tanh(c), atol=1e-12)
        if k == 1:
            np.testing.assert_allclose(a.states["h"], out[:, 1, 3 * d : 3 * d + 3], atol=1e-12)
        for n in "ifo":
            assert np.all((a.gates[n] > 0) & (a.gates[n] < 1))


@pytest.mark.parametrize("cls", [rnnkit.GRU, nn.GRU])
def test_gru_gates_reproduce_the_states(cls):
    m = cls(2, 4, batch_first=True)
    x = torch.randn(3, 6, 2)
    (a,) = activity(m, x, sample=2)
    out = _outputs(m, x)[2]
    r, z, n = (a.gates[k] for k in "rzn")
    h_prev = np.concatenate([np.zeros((1, 4)), out[:-1]])
    np.testing.assert_allclose(a.states["h"], out, atol=1e-12)
    np.testing.assert_allclose(out, (1 - z) * n + z * h_prev, atol=1e-12)
    # n from the paper's equation with the reported r
    W_in, W_hn = m.weight_ih_l0.detach().numpy()[8:], m.weight_hh_l0.detach().numpy()[8:]
    b_in, b_hn = m.bias_ih_l0.detach().numpy()[8:], m.bias_hh_l0.detach().numpy()[8:]
    n_ref = np.tanh(x[2].numpy() @ W_in.T + b_in + r * (h_prev @ W_hn.T + b_hn))
    np.testing.assert_allclose(n, n_ref, atol=1e-12)


@pytest.mark.parametrize(
    ("make", "order"),
    [(lambda: rnnkit.LSTM(3, 4), "ifgo"), (lambda: nn.LSTM(3, 4), "ifgo"),
     (lambda: rnnkit.LSTM(3, 4, peephole=True), "ifgo"),
     (lambda: rnnkit.LSTM(3, 4, coupled_gates=True), "ifgo"),
     (lambda: rnnkit.LSTM(3, 4, input_gate=False), "fgo"), (lambda: rnnkit.GRU(3, 4), "rzn")],
)  # fmt: skip
def test_gates_come_in_torch_order(make, order):
    """The documented order is torch's (i f g o); the LSTM cells' hook gave f i g o (it computes
    f first, for CIFG's i = 1 - f), so iterating over the gates listed f first."""
    assert list(activity(make(), torch.randn(5, 2, 3))[0].gates) == list(order)


def test_rnn_has_states_and_a_note():
    (a,) = activity(nn.RNN(2, 3), torch.randn(4, 1, 2))
    assert a.gates == {} and "no gates" in a.note and a.states["h"].shape == (4, 3)


def test_nonstandard_cells_fall_back_or_use_the_hook():
    x = torch.randn(4, 2, 2)
    (plain,) = activity(stack(LinearCell, 2, 3), x)
    assert plain.gates == {} and "no gates() hook" in plain.note
    (fake,) = activity(stack(FakeLSTM, 2, 3), x)  # family 'lstm' but not torch's: no replay
    assert fake.gates == {} and "FakeLSTM" in fake.note
    m = stack(GatedLinearCell, 2, 3)
    (hooked,) = activity(m, x, sample=1)
    assert set(hooked.gates) == {"a", "hook_t"} and hooked.note == ""
    np.testing.assert_allclose(hooked.gates["hook_t"], 7.0)
    h = hooked.states["h"]
    xp = (x[:, 1] @ m.weight_ih_l0.t()).detach().numpy()
    h_prev = np.concatenate([np.zeros((1, 3)), h[:-1]])
    np.testing.assert_allclose(hooked.gates["a"], 1 / (1 + np.exp(-(h_prev + xp))), atol=1e-12)
    with pytest.raises(ValueError, match="sample"):
        activity(m, x, sample=2)


@pytest.mark.parametrize(("cls", "kw"), [(rnnkit.LSTM, {}), (rnnkit.GRU, {})], ids=["lstm", "gru"])
def test_activity_under_autocast_is_the_float32_one(cls, kw):
    """Under autocast the states came from the replay (in float32, autocast off) but the gates
    were recomputed with autocast on, in bfloat16 (4e-3 off): gates that no longer rebuild the
    states. They are computed as the replay now: the float32 activity, gates and states."""
    torch.manual_seed(0)
    m = cls(3, 6, num_layers=2, dtype=torch.float32, **kw)
    x = torch.randn(20, 2, 3, dtype=torch.float32)
    want = activity(m, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = activity(m, x)
    for a, b in zip(want, got, strict=True):
        assert a.gates.keys() == b.gates.keys() and a.gates
        for n in a.gates:
            np.testing.assert_allclose(b.gates[n], a.gates[n], rtol=1e-6, atol=1e-6)
        for n in a.states:
            np.testing.assert_allclose(b.states[n], a.states[n], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU], ids=["lstm", "gru"])
def test_training_mode_gates_have_no_recurrent_dropout_mask(cls):
    """In training mode with recurrent dropout the gates are the replay's steps', which run no
    recurrent mask (with a warning): the same gates and states as the same weights without it,
    so that they rebuild the reported states (a masked ``h_{t-1}`` in the gates alone would not)."""
    torch.manual_seed(0)
    m = cls(2, 3, num_layers=2, bidirectional=True, recurrent_dropout=0.5).train()
    plain = cls(2, 3, num_layers=2, bidirectional=True).train()
    plain.load_state_dict(m.state_dict())
    x = torch.randn(5, 2, 2)
    with pytest.warns(UserWarning, match="training mode with recurrent_dropout"):
        got = activity(m, x, sample=1)
    for a, b in zip(got, activity(plain, x, sample=1), strict=True):
        assert a.gates.keys() == b.gates.keys() and a.gates and a.states.keys() == b.states.keys()
        for n in a.gates:
            np.testing.assert_array_equal(a.gates[n], b.gates[n])
        for n in a.states:
            np.testing.assert_array_equal(a.states[n], b.states[n])
