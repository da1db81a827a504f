"""A sequence fed in pieces (step-by-step decoding) with batch norm's per-time-step statistics:
the layer's ``step`` (the pieces' first time index) and the task models' decoders that use it,
against one call over the whole sequence in evaluation."""

from __future__ import annotations

import pytest
import torch

import rnnkit

BN = {"norm": "batch", "max_len": 6}


def _scrambled(m):
    """Distinct running statistics per slot: a wrong slot shows in the numbers."""
    with torch.no_grad():
        for name, b in m.named_buffers():
            b.copy_(torch.rand_like(b) + (0.5 if "var" in name else -0.5))
    return m


def _pieces(layer, x, cuts, hx=None, **kw):
    """``layer`` over ``x (T, B, I)`` cut at ``cuts``, the state carried, ``step`` = steps fed."""
    outs, state, t0 = [], hx, 0
    for t1 in [*cuts, x.shape[0]]:
        y, state = layer(x[t0:t1], state, None, t0, **kw)
        outs.append(y)
        t0 = t1
    return torch.cat(outs), state


@pytest.mark.parametrize("impl", ["loop", "fused"])
def test_layer_step_continues_a_sequence(impl):
    """Each call used slots 0, 1, ... whatever the steps already fed: step-by-step decoding
    normalized every step with slot 0's statistics."""
    torch.manual_seed(0)
    layer = _scrambled(rnnkit.LSTM(3, 4, 2, impl=impl, peephole=True, **BN)).eval()
    x = torch.randn(9, 2, 3)  # 9 > max_len: the last slot is reused
    want, (h, c) = layer(x)
    for cuts in ([1, 2, 3, 4, 5, 6, 7, 8], [4], [7]):
        got, (h1, c1) = _pieces(layer, x, cuts)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close((h1, c1), (h, c))


def test_layer_step_in_training_updates_the_sequence_slots():
    torch.manual_seed(0)
    a = _scrambled(rnnkit.LSTM(3, 4, impl="loop", **BN)).train()
    b = rnnkit.LSTM(3, 4, impl="loop", **BN).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 3, 3)
    want, _ = a(x)
    got, _ = _pieces(b, x, [2, 3, 7])
    torch.testing.assert_close(got, want)
    for (n, u), v in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(u, v, msg=n)


def test_layer_step_with_lengths_and_batch_first():
    torch.manual_seed(0)
    layer = _scrambled(rnnkit.LSTM(3, 4, batch_first=True, **BN)).eval()
    x, lengths = torch.randn(2, 5, 3), torch.tensor([5, 3])
    full, _ = layer(x, None, lengths)
    y, state = layer(x[:, :1], None)
    rest, _ = layer(x[:, 1:], state, lengths - 1, 1)
    torch.testing.assert_close(torch.cat([y, rest], 1), full)


@pytest.mark.parametrize("step", [-1, 0.5, True])
def test_layer_step_is_validated(step):
    layer = rnnkit.LSTM(3, 4, **BN)
    with pytest.raises(ValueError, match="step must be a non-negative int"):
        layer(torch.randn(2, 1, 3), None, None, step)


def test_layer_step_needs_a_unidirectional_layer():
    layer = rnnkit.LSTM(3, 4, bidirectional=True, **BN)
    with pytest.raises(ValueError, match="step=2 .* needs a unidirectional layer"):
        layer(torch.randn(2, 1, 3), None, None, 2)
