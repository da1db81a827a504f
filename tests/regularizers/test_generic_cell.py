"""Regularizers reach any cell through the protocol alone: a toy cell with two state
components of different sizes and two recurrent weights ``weight_hh`` and ``weight_hh_m``."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.cells.base import Cell, ParamSpec, StepContext, linear
from rnnkit.layers import RecurrentStack

from .reference import grads, recorder, reference  # noqa: F401 - recorder is a fixture


class ToyCell(Cell):
    """``h' = tanh(a_h + W_hh (r ⊙ h) + W_hh_m m)``, ``m' = (m + tanh(a_m)) / 2`` with
    ``[a_h; a_m] = W_ih x``; state ``(h (B, H), m (B, M))``."""

    family = "toy"
    state_names = ("h", "m")
    M = 2

    def param_specs(self):
        H, M = self.hidden_size, self.M
        return [
            ParamSpec("weight_ih", (H + M, self.input_size)),
            ParamSpec("weight_hh", (H, H)),
            ParamSpec("weight_hh_m", (H, M)),
        ]

    def state_sizes(self):
        return (self.hidden_size, self.M)

    def project_input(self, p, x):
        return linear(x, p["weight_ih"])

    def step(self, p, xp, state, ctx: StepContext):
        h, m = state
        H = self.hidden_size
        h1 = torch.tanh(xp[:, :H] + ctx.drop_recurrent(h) @ p["weight_hh"].T + m @ p["weight_hh_m"].T)
        return h1, (m + torch.tanh(xp[:, H:])) / 2

    def reference_step(self, p, x, state, rec):
        """The same equations, written out with an explicit mask (the test's reference)."""
        h, m = state
        a = x @ p["weight_ih"].T
        H = self.hidden_size
        hd = h if rec is None else h * rec
        return torch.tanh(a[:, :H] + hd @ p["weight_hh"].T + m @ p["weight_hh_m"].T), (
            m + torch.tanh(a[:, H:])
        ) / 2


@pytest.mark.parametrize("train", [True, False])
def test_toy_cell_all_regularizers_packed_bidirectional(recorder, train):  # noqa: F811
    torch.manual_seed(0)
    opts = {
        "recurrent_dropout": 0.4,
        "weight_drop": 0.5,
        "locked_dropout": 0.5,
        "zoneout": {"m": 0.5, "h": 0.2},
    }
    layer = RecurrentStack(lambda n: ToyCell(n, 3), 2, 3, num_layers=2, bidirectional=True, **opts)
    layer.train(train)
    assert layer.needs_custom_loop()
    lengths = torch.tensor([3, 5, 1])
    x = torch.randn(5, 3, 2, requires_grad=True)
    h0 = tuple(torch.randn(s, requires_grad=True) for s in layer.state_shapes(3))
    out, final = layer(pack_padded_sequence(x, lengths, enforce_sorted=False), h0)
    out, _ = pad_packed_sequence(out, total_length=5)
    kinds = [k for k, _ in recorder]
    if train:  # two weight_hh* tensors per layer-direction, both dropped
        assert kinds.count("weight_drop") == 8 and kinds.count("zoneout") == 8
    exp_out, exp_final = reference(layer, x, h0, recorder, lengths)
    got, exp = [out, *final], [exp_out, *exp_final]
    for u, v in zip(got, exp):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)
    leaves = [x, *h0, *layer.parameters()]
    for u, v in zip(grads(got, leaves), grads(exp, leaves)):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)
