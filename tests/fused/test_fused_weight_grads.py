"""The weight gradients that the compiled kernels form after the time loop, in float32 at shapes
where they run on oneDNN (rows x in x out >= 2**20, ``kOneDnnMinWork``), against torch.nn.

The other parity tests run float64 (no oneDNN) or float32 at shapes below that threshold, so the
oneDNN layout of these GEMMs (gru_rnn.cpp ``dw_from_out``: dW^T summed over the segments, then
transposed once) was never reached: returning dW^T untransposed (square W_hh: same shape) passed
every test.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from ..conftest import make_pair

# (torch.nn's warning for its own float32 projection LSTM)
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
T, B, I, H = 20, 8, 16, 128  # 19 steps x 8 rows x 128 x 128 = 2.5e6 multiply-adds >= 2**20


def _grads(layer, x, w):
    out, hn = layer(x)
    hn = hn[0] if isinstance(hn, tuple) else hn  # LSTM: (h_n, c_n)
    y = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    return torch.autograd.grad((y * w).sum() + hn.sum(), list(layer.parameters()))


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("mode", ["RNN_TANH", "RNN_RELU", "GRU", "LSTM"])
def test_float32_weight_gradients_on_onednn_match_torch(backend, mode, packed):
    a, b = make_pair(mode, I, H, bidirectional=True, dtype=torch.float32, impl="fused")
    torch.manual_seed(1)
    x = torch.randn(T, B, I, dtype=torch.float32)
    if packed:  # unsorted lengths: the reverse direction's sequences start at different steps
        x = pack_padded_sequence(x, torch.tensor([20, 7, 13, 20, 1, 16, 9, 18]), enforce_sorted=False)
    rows = x.data.shape[0] if packed else T * B
    w = torch.randn(*((rows,) if packed else (T, B)), 2 * H, dtype=torch.float32)
    ga, gb = _grads(a, x, w), _grads(b, x, w)
    for (name, _), u, v in zip(a.named_parameters(), ga, gb, strict=True):
        scale = v.abs().max().item()
        tol = dict(atol=1e-4 * max(scale, 1.0), rtol=1e-4)
        torch.testing.assert_close(u, v, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("packed", [False, True])
def test_float32_lstm_projection_on_onednn_matches_torch(backend, packed):
    """The projection's GEMMs on oneDNN (``Linear`` of W_hr in the forward, of W_hr^T in the
    backward's dh): 64 rows x 256 x 128 = 2.1e6 >= 2**20. Below that they take ATen's GEMM, and a
    backward ``Linear`` built from W_hr instead of W_hr^T passed every test."""
    a, b = make_pair("LSTM", I, 256, proj_size=128, bidirectional=True, dtype=torch.float32, impl="fused")
    torch.manual_seed(1)
    x = torch.randn(5, 64, I, dtype=torch.float32)
    if packed:  # sorted lengths: the first steps keep all 64 rows (the oneDNN ones)
        x = pack_padded_sequence(x, torch.tensor([5] * 40 + [3] * 20 + [1] * 4), enforce_sorted=True)
    rows = x.data.shape[0] if packed else 5 * 64
    w = torch.randn(*((rows,) if packed else (5, 64)), 256, dtype=torch.float32)
    ya, yb = a(x)[0], b(x)[0]
    ya, yb = (ya.data, yb.data) if packed else (ya, yb)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad((ya * w).sum(), list(a.parameters()))
    gb = torch.autograd.grad((yb * w).sum(), list(b.parameters()))
    for (name, _), u, v in zip(a.named_parameters(), ga, gb, strict=True):
        tol = dict(atol=1e-4 * max(v.abs().max().item(), 1.0), rtol=1e-4)
        torch.testing.assert_close(u, v, **tol, msg=lambda m, n=name: f"{n}: {m}")
