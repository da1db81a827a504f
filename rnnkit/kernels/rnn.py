"""Fused Elman RNN direction (tanh or relu) in pure PyTorch: explicit BPTT.

Forward per step: ``h_t = act(xp_t + (h_{t-1} ⊙ m) W_hhᵀ)`` (one GEMM, activation in
place); ``xp`` holds ``W_ih x_t + b_ih + b_hh``. Backward per step:
``da = dh ⊙ act'(h_t)`` (``1 - h²`` for tanh, ``[h > 0]`` for relu),
``dh_{t-1} = (da W_hh) ⊙ m``; after the loop ``dW_hh = daᵀ (h_prev ⊙ m)`` in one GEMM.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import load_prev, schedule
from ._gemm import Linear, mm_tn


def forward(xp: Tensor, h0: Tensor, w_hh: Tensor, mask: Tensor | None, relu: bool,
            batch_sizes: tuple[int, ...], reverse: bool, zh: Tensor | None = None):  # fmt: skip
    """Returns ``out (N, H), h_n (B, H)`` and the saved tensors; ``zh (N, H)`` optional
    zoneout weights: ``h_t = lerp(h̃_t, h_{t-1}, zh_t)``."""
    N, H = xp.shape[0], h0.shape[1]
    out, hprev = xp.new_empty(N, H), xp.new_empty(N, H)
    hnew = out if zh is None else xp.new_empty(N, H)  # h̃ (for act'), before zoneout
    hbuf = h0.clone()
    lin = Linear(w_hh, h0.shape[0])
    for off, bs in schedule(batch_sizes, reverse):
        s = slice(off, off + bs)
        hp, o = hprev[s], hnew[s]
        load_prev(hbuf, mask, bs, hp)
        a = lin(hp, base=xp[s])
        torch.clamp(a, min=0, out=o) if relu else torch.tanh(a, out=o)
        if zh is not None:
            torch.lerp(o, hbuf[:bs], zh[s], out=out[s])
        hbuf[:bs].copy_(out[s])
    return out, hbuf, (hnew, hprev)


def backward(gout: Tensor, ghn: Tensor, saved, w_hh: Tensor, mask: Tensor | None, relu: bool,
             batch_sizes: tuple[int, ...], reverse: bool, zh: Tensor | None = None):  # fmt: skip
    """Returns ``d xp, d h0, d W_hh``."""
    out, hprev = saved
    da_all = torch.empty_like(out)
    dhbuf = ghn.clone()
    lin_t = Linear(w_hh.t(), ghn.shape[0])
    dhz = torch.empty_like(ghn)
    for off, bs in reversed(schedule(batch_sizes, reverse)):
        s = slice(off, off + bs)
        da, o = da_all[s], out[s]
        torch.add(gout[s], dhbuf[:bs], out=da)
        if zh is not None:  # h_t = lerp(h̃_t, h_{t-1}, zh): split the gradient
            torch.mul(da, zh[s], out=dhz[:bs])
            da.sub_(dhz[:bs])
        if relu:
            da.mul_(o > 0)
        else:
            da.mul_(torch.addcmul(torch.ones_like(o), o, o, value=-1))
        if mask is None:
            dhbuf[:bs].copy_(lin_t(da))
        else:
            torch.mul(lin_t(da), mask[:bs], out=dhbuf[:bs])
        if zh is not None:
            dhbuf[:bs].add_(dhz[:bs])
    return da_all, dhbuf, mm_tn(da_all, hprev)
