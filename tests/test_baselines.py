"""The baselines' input checks and padding mask, where a torch.nn utility holds a weight and
under autocast (the rest: tests/cli/test_models.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.baselines import TCN, ConvRecurrent


def _tcn():
    return TCN(4, 6, num_layers=2)


def _conv():
    return ConvRecurrent(4, lambda c: rnnkit.LSTM(c, 5), conv_channels=3)


@pytest.mark.parametrize("make, first", [(_tcn, "blocks.0.conv1"), (_conv, "convs.0")])
def test_the_input_check_reads_a_spectral_normed_weight_no_extra_time(make, first):
    # checking the input against the first convolution's weight read it once more: a second
    # power iteration per training call (other numbers than the same model without the check)
    torch.manual_seed(0)
    m = make().train()
    nn.utils.parametrizations.spectral_norm(m.get_submodule(first))
    ref = copy.deepcopy(m.get_submodule(first))
    m(torch.randn(5, 3, 4))
    ref.weight  # noqa: B018 - one read: the one power iteration of the convolution's own call
    u = m.get_submodule(first).parametrizations.weight[0]._u
    torch.testing.assert_close(u, ref.parametrizations.weight[0]._u, rtol=0, atol=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_tcn_padded_batch_under_autocast_keeps_autocast_dtype(bidirectional):
    # the mask zeroing the outputs past each length was in the input's dtype: a float32 mask
    # promoted autocast's bfloat16 output to float32, only when lengths were given
    m = TCN(4, 6, num_layers=2, bidirectional=bidirectional).float()
    x, lengths = torch.randn(5, 3, 4, dtype=torch.float32), torch.tensor([5, 3, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = m(x)
        y_padded, _ = m(x, lengths=lengths)
    assert y.dtype == y_padded.dtype == torch.bfloat16
    assert not y_padded[3:, 2].any() and y_padded[:2, 2].any()


@pytest.mark.parametrize("state", [torch.zeros(2), (None,), (None, None, None), [torch.zeros(3, 4, 2)]])
def test_conv_recurrent_refuses_a_state_that_is_not_a_pair(state):
    # it was unpacked as is: "not enough values to unpack", or a tensor split into two 0-d
    # tensors (then "got a tensor of shape ()", not the state given)
    with pytest.raises(ValueError, match=r"ConvRecurrent state must be a pair .*got "):
        _conv()(torch.randn(5, 3, 4), state)
