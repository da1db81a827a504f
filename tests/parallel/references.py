"""Unfused references written straight from each paper's equations: a plain loop over time,
one layer-direction at a time, and a stack built from them (flip for the reverse direction)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _lin(p, x, names):
    W, b = p["weight_ih"], p.get("bias_ih")
    u = x @ W.t() + (0 if b is None else b)
    return u.chunk(names, -1)


def _g(v):
    return torch.where(v >= 0, v + 0.5, torch.sigmoid(v))


def mingru(module, p, x, h):
    """Feng et al. (2024): z = σ(W_z x), h̃ = W_h x, h = (1 − z) h + z h̃ (h̃ = g(·) in log space)."""
    out = []
    for t in range(x.shape[0]):
        k, v = _lin(p, x[t], 2)
        z, ht = torch.sigmoid(k), (_g(v) if module.log_space else v)
        h = (1 - z) * h + z * ht
        out.append(h)
    return torch.stack(out), h


def minlstm(module, p, x, h):
    """Feng et al. (2024): f, i = σ(·); f' = f / (f + i), i' = i / (f + i); h = f' h + i' h̃."""
    out = []
    for t in range(x.shape[0]):
        kf, ki, v = _lin(p, x[t], 3)
        f, i = torch.sigmoid(kf), torch.sigmoid(ki)
        ht = _g(v) if module.log_space else v
        h = f / (f + i) * h + i / (f + i) * ht
        out.append(h)
    return torch.stack(out), h


def qrnn(module, p, x, c, prev=None):
    """Bradbury et al. (2017): masked convolution over time, then fo-pooling; ``prev (B, I)``
    is ``x_{-1}`` (the input before this call's first step) for ``window=2``, else zeros."""
    k, (T, _, I) = module.window, x.shape
    W = p["weight_ih"].view(-1, k, I)  # (3H, window, I): column blocks x_{t-1}, x_t
    xc = F.pad(x.permute(1, 2, 0), (k - 1, 0))  # (B, I, T + k − 1), causal: zeros before t = 0
    if prev is not None and k == 2:
        xc = torch.cat([prev.unsqueeze(-1), xc[..., 1:]], -1)
    u = F.conv1d(xc, W.permute(0, 2, 1), p.get("bias_ih")).permute(2, 0, 1)  # (T, B, 3H)
    Z, Fg, O = u.chunk(3, -1)
    Z, Fg, O = torch.tanh(Z), torch.sigmoid(Fg), torch.sigmoid(O)
    out = []
    for t in range(T):
        c = Fg[t] * c + (1 - Fg[t]) * Z[t]
        out.append(O[t] * c)
    return torch.stack(out), c


def lru(module, p, x, h):
    """Orvieto et al. (2023): h = λ h + γ (B x), y = Re(C h) + D x."""
    lam = torch.exp(-torch.exp(p["nu_log"]) + 1j * p["theta"])
    gamma = torch.sqrt(1 - lam.abs() ** 2)
    Bm, C = torch.complex(p["B_re"], p["B_im"]), torch.complex(p["C_re"], p["C_im"])
    D = p["D"]
    out = []
    for t in range(x.shape[0]):
        h = lam * h + gamma * (x[t].to(Bm.dtype) @ Bm.t())
        y = (h @ C.t()).real + (x[t] * D if D.dim() == 1 else x[t] @ D.t())
        out.append(y)
    return torch.stack(out), h


REFS = {"MinGRU": mingru, "MinLSTM": minlstm, "QRNN": qrnn, "LRU": lru}


def stack(module, x, h0=None):
    """The whole layer from the reference of one direction: time-major ``x (T, B, I)``. A
    QRNN with ``window=2`` takes and returns ``(c, (x_prev_0, ...))`` (``h0`` may be ``c``):
    ``x_prev_k`` is ``x_{-1}`` of layer ``k``'s forward direction, and its last input after."""
    ref = REFS[type(module).__name__]
    D, finals, lasts = module.num_directions, [], []
    B = x.shape[1]
    conv = getattr(module, "window", 1) == 2
    prevs = None
    if conv and isinstance(h0, tuple):
        h0, prevs = h0
    for k in range(module.num_layers):
        outs = []
        lasts.append(x[-1])
        for d in range(D):
            s = (
                h0[k * D + d]
                if h0 is not None
                else torch.zeros(B, module.state_size, dtype=module.state_dtype)
            )
            p = module.layer_params(k, d)
            if d == 0:
                y, s = ref(module, p, x, s, prevs[k]) if prevs is not None else ref(module, p, x, s)
            else:
                y, s = ref(module, p, x.flip(0), s)
                y = y.flip(0)
            outs.append(y)
            finals.append(s)
        x = torch.cat(outs, -1)
    return x, ((torch.stack(finals), tuple(lasts)) if conv else torch.stack(finals))
