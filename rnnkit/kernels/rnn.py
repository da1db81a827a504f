"""Fused Elman RNN direction (tanh or relu) in pure PyTorch: explicit BPTT.

Forward per step: ``h_t = act(xp_t + (h_{t-1} ⊙ m) W_hhᵀ)`` (one GEMM, activation in
place); ``xp`` holds ``W_ih x_t + b_ih + b_hh``. Backward per step:
``da = dh ⊙ act'(h_t)`` (``1 - h²`` for tanh; for relu ``0`` where ``h ≤ 0``, else ``dh``, a NaN ``h``
included, as torch's relu backward),
``dh_{t-1} = (da W_hh) ⊙ m``; after the loop ``dW_hh = daᵀ (h_prev ⊙ m)`` in one GEMM.

``h_{t-1}`` is stored (``hprev``, N x H) only with a mask or zoneout; otherwise it is the
previous step's output rows (or ``h0``), so the second saved tensor is a copy of ``h0`` and
``dW_hh`` reads ``h_{t-1}`` back from ``out`` in a few GEMMs (:func:`prev_segments`).
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
    keep_prev = mask is not None or zh is not None
    out = xp.new_empty(N, H)
    hprev = xp.new_empty(N, H) if keep_prev else h0.clone()
    hnew = out if zh is None else xp.new_empty(N, H)  # h̃ (for act'), before zoneout
    hbuf = h0.clone()
    lin = Linear(w_hh, h0.shape[0])
    for off, bs in schedule(batch_sizes, reverse):
        s = slice(off, off + bs)
        o = hnew[s]
        hp = load_prev(hbuf, mask, bs, hprev[s]) if keep_prev else hbuf[:bs]
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
            da.masked_fill_(o <= 0, 0)  # torch's relu backward: a NaN o passes da
        else:
            da.mul_(torch.addcmul(torch.ones_like(o), o, o, value=-1))
        if mask is None:
            dhbuf[:bs].copy_(lin_t(da))
        else:
            torch.mul(lin_t(da), mask[:bs], out=dhbuf[:bs])
        if zh is not None:
            dhbuf[:bs].add_(dhz[:bs])
    if hprev.shape[0] == out.shape[0]:
        return da_all, dhbuf, mm_tn(da_all, hprev)
    dw = None  # h_{t-1} not stored: read back from out (== h̃ here) and h0 (= hprev)
    for da_off, n, from_h0, src_off in prev_segments(batch_sizes, reverse):
        part = mm_tn(da_all[da_off : da_off + n], (hprev if from_h0 else out)[src_off : src_off + n])
        dw = part if dw is None else dw.add_(part)
    return da_all, dhbuf, dw if dw is not None else w_hh.new_zeros(w_hh.shape)


def prev_segments(batch_sizes: tuple[int, ...], reverse: bool) -> list[tuple[int, int, bool, int]]:
    """Where ``h_{t-1}`` of every row lives when it was not stored: ``(da_off, n, from_h0,
    src_off)`` row blocks, ``da[da_off : da_off + n]`` pairing with ``src[src_off : ...]``,
    ``src`` the output rows or ``h0``. A step of ``bs`` rows after one (processing order) of
    ``pbs`` rows reads rows ``[0, min)`` from that step's output and rows ``[pbs, bs)`` (a
    reverse packed direction: sequences that start here) from ``h0``; blocks contiguous in both
    merge, so a padded batch gives two."""
    segs = []
    steps = schedule(batch_sizes, reverse)
    for i, (off, bs) in enumerate(steps):
        if i == 0:
            segs.append((off, bs, True, 0))
            continue
        poff, pbs = steps[i - 1]
        segs.append((off, min(bs, pbs), False, poff))
        if bs > pbs:
            segs.append((off + pbs, bs - pbs, True, pbs))
    merged: list[list] = []
    for da_off, n, h0_, src in sorted(segs):
        last = merged[-1] if merged else None
        if last and last[2] == h0_ and last[0] + last[1] == da_off and last[3] + last[1] == src:
            last[1] += n
        else:
            merged.append([da_off, n, h0_, src])
    return [tuple(m) for m in merged]  # type: ignore[misc]
