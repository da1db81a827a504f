"""Streaming: stepping a layer one time step at a time reproduces its sequence output."""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.kernels.stream import Stream

CASES = [
    (rnnkit.LSTM, {}),
    (rnnkit.LSTM, {"proj_size": 2}),
    (rnnkit.GRU, {}),
    (rnnkit.RNN, {"nonlinearity": "relu"}),
    (rnnkit.LSTM, {"norm": "layer"}),  # a zoo cell: its own step()
    (rnnkit.GRU, {"zoneout": 0.3, "recurrent_dropout": 0.2}),  # evaluation semantics
]


@pytest.mark.parametrize("cls,kw", CASES)
def test_steps_equal_sequence_output(cls, kw):
    torch.manual_seed(0)
    layer = cls(3, 4, 2, **kw).eval()
    x = torch.randn(5, 2, 3)
    out, final = layer(x)
    stream, state, ys = Stream(layer), None, []
    for t in range(5):
        y, state = stream.step(x[t], state)
        ys.append(y)
    torch.testing.assert_close(torch.stack(ys), out, atol=1e-12, rtol=1e-12)
    for u, v in zip(
        state if isinstance(state, tuple) else (state,), final if isinstance(final, tuple) else (final,)
    ):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)


def test_unbatched_and_errors():
    torch.manual_seed(0)
    layer = rnnkit.LSTM(3, 4).eval()
    x = torch.randn(3, 3)
    out, _ = layer(x)
    stream, state = Stream(layer), None
    for t in range(3):
        y, state = stream.step(x[t], state)
    torch.testing.assert_close(y, out[-1], atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="unidirectional"):
        Stream(rnnkit.GRU(3, 4, bidirectional=True))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        stream.step(torch.randn(2, 5))
    with pytest.raises(ValueError, match="eval"):
        Stream(rnnkit.GRU(3, 4, zoneout=0.1).train()).step(torch.randn(3))
