"""MinGRU, MinLSTM, QRNN and LRU: dropout between layers and the QRNN's zoneout (training masks,
the evaluation expectation, where the mask is drawn, its checks)."""

from __future__ import annotations

import pytest
import torch

import rnnkit

from .test_layers import c_of, make


def test_dropout_only_in_training_zoneout_expectation_in_eval():
    m = make("qrnn", num_layers=2, dropout=0.5)
    x = torch.randn(6, 2, 3)
    m.eval()
    ref = make("qrnn", num_layers=2).eval()
    torch.testing.assert_close(m(x)[0], ref(x)[0])
    m = make("qrnn", num_layers=2, dropout=0.5, zoneout=0.5)
    m.train()
    assert not torch.allclose(m(x)[0], ref(x)[0])
    # zoneout: f_t = 1 (state kept exactly) for about half of the units
    m1 = make("qrnn_w1", H=200, zoneout=0.5).train()
    c0 = torch.randn(1, 4, 200)
    _, c1 = m1.step(torch.randn(4, 3), c0)
    kept = (c1 == c0).double().mean()
    assert 0.4 < kept < 0.6


@pytest.mark.parametrize("window", [1, 2])
def test_qrnn_zoneout_eval_is_the_expectation(window):
    # Training sets f_t = 1 with probability p and does not rescale (the authors' code), so
    # evaluation must use E[f] = p + (1 - p) f, i.e. Krueger's c_t = p c_{t-1} + (1 - p) c~_t,
    # as the authors' ``F *= 1 - zoneout``; plain f would change the forget gate at eval time.
    p, I, H, T, B = 0.3, 3, 4, 5, 2
    torch.manual_seed(0)
    m = rnnkit.QRNN(I, H, window=window, zoneout=p).double().eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    c0 = torch.randn(1, B, H, dtype=torch.float64)
    w, b = m.weight_ih_l0, m.bias_ih_l0
    c, outs = c0[0], []
    for t in range(T):
        xs = x[t] if window == 1 else torch.cat([x[t - 1] if t else torch.zeros_like(x[t]), x[t]], -1)
        z, f, o = (xs @ w.t() + b).chunk(3, -1)
        z, f, o = torch.tanh(z), torch.sigmoid(f), torch.sigmoid(o)
        c = p * c + (1 - p) * (f * c + (1 - f) * z)
        outs.append(o * c)
    y, cn = m(x, c0)
    torch.testing.assert_close(y, torch.stack(outs))
    torch.testing.assert_close(c_of(cn)[0], c)
    # the training masks average to it: the mean of many training steps from the same state
    m1 = rnnkit.QRNN(I, H, window=1, zoneout=p).double()
    x1, s0 = x[0, :1].expand(20000, I), c0[0, :1].expand(20000, H)
    want = m1.eval().step(x1[:1], s0[:1].unsqueeze(0))[1]
    got = m1.train().step(x1, s0.unsqueeze(0))[1].mean(1, keepdim=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0.02)


def test_qrnn_zoneout_draws_its_mask_where_every_regularizer_does(monkeypatch):
    """QRNN's training zoneout drew ``torch.rand_like(f) < p``, outside
    ``regularizers.sample_mask`` (which says every regularizer draws there, so that tests can
    record or replace masks; the CPU's counter-based generator). It draws there now: with the
    mask it drew, the output is the zoneout equation f' = 1 where the mask keeps, else f."""
    from rnnkit import regularizers

    log = []
    real = regularizers.sample_mask
    monkeypatch.setattr(regularizers, "sample_mask", lambda *a: log.append((a[0], real(*a))) or log[-1][1])
    torch.manual_seed(0)
    m = rnnkit.QRNN(3, 4, window=1, zoneout=0.4).double().train()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    y, c_n = m(x)
    assert [k for k, _ in log] == ["zoneout"]
    keep = log[0][1]  # (T, B, H): 1 = the forget gate is 1 (c_{t-1} kept)
    assert keep.shape == (6, 2, 4) and set(keep.unique().tolist()) <= {0.0, 1.0}
    z, f, o = (x @ m.weight_ih_l0.T + m.bias_ih_l0).chunk(3, -1)
    z, f, o = torch.tanh(z), torch.where(keep != 0, 1.0, torch.sigmoid(f)), torch.sigmoid(o)
    c, outs = torch.zeros(2, 4, dtype=torch.float64), []
    for t in range(6):
        c = f[t] * c + (1 - f[t]) * z[t]
        outs.append(o[t] * c)
    torch.testing.assert_close(y, torch.stack(outs))


def test_qrnn_zoneout_assigned_later_is_checked():
    """QRNN's zoneout, a plain attribute, took any value assigned after construction (1.0 never
    lets c change; a string failed at the next training call); checked as at construction."""
    m = rnnkit.QRNN(3, 4, zoneout=0.2)
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(ValueError, match=r"zoneout must be a number in \[0, 1\), got "):
            m.zoneout = bad
    assert m.zoneout == 0.2
    m.zoneout = 0
    assert m.zoneout == 0.0 and "zoneout" not in repr(m)
