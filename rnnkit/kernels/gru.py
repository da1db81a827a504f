"""Fused GRU direction (torch's form) in pure PyTorch: explicit BPTT.

Forward per step (``xp`` holds ``W_ih x_t + b_ih``, gate order r, z, n; ``m`` the optional
recurrent-dropout mask, applied only to the GEMM input, as in the cell)::

    a_t = (h_{t-1} ⊙ m) W_hhᵀ + b_hh                      (one GEMM, saved)
    r, z = σ(xp_rz + a_rz);  n = tanh(xp_n + r ⊙ a_n)
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

Backward per step::

    dn' = dh ⊙ (1 - z) ⊙ (1 - n²);   dz' = dh ⊙ (h_{t-1} - n) ⊙ z(1-z)
    dr' = dn' ⊙ a_n ⊙ r(1-r);        da = [dr', dz', dn' ⊙ r]
    d xp = [dr', dz', dn'];          dh_{t-1} = dh ⊙ z + (da W_hh) ⊙ m

then ``dW_hh = daᵀ (h_prev ⊙ m)`` and ``db_hh = Σ da`` over all rows, once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import schedule
from ._gemm import Linear, mm_tn


def forward(xp: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, mask: Tensor | None,
            batch_sizes: tuple[int, ...], reverse: bool, zh: Tensor | None = None):  # fmt: skip
    """Returns ``out (N, H), h_n (B, H)`` and the saved tensors; ``zh (N, H)`` optional
    zoneout weights: ``h_t = lerp(h̃_t, h_{t-1}, zh_t)``."""
    N, H = xp.shape[0], h0.shape[1]
    new = xp.new_empty
    # a_n (the n-part of the recurrent GEMM) is all backward needs of it: (N, H), not (N, 3H)
    gates, an, hprev, out = new(N, 3 * H), new(N, H), new(N, H), new(N, H)
    hprev_m = hprev if mask is None else new(N, H)
    hbuf = h0.clone()
    lin = Linear(w_hh, h0.shape[0])
    for off, bs in schedule(batch_sizes, reverse):
        s = slice(off, off + bs)
        hp, g, x = hprev[s], gates[s], xp[s]
        hp.copy_(hbuf[:bs])
        hm = hp if mask is None else torch.mul(hp, mask[:bs], out=hprev_m[s])
        a = lin(hm, bias=b_hh)
        an[s].copy_(a[:, 2 * H :])
        torch.add(x[:, : 2 * H], a[:, : 2 * H], out=g[:, : 2 * H]).sigmoid_()
        n = g[:, 2 * H :]
        torch.addcmul(x[:, 2 * H :], g[:, :H], a[:, 2 * H :], out=n).tanh_()
        # h = (h_{t-1} - n) z + n as torch's GRUCell (and the C++ kernel): lerp(n, h_{t-1}, z) gave
        # NaN for an infinite h_{t-1} at z = 1, where torch.nn.GRU keeps the inf
        torch.sub(hp, n, out=out[s]).mul_(g[:, H : 2 * H]).add_(n)
        if zh is not None:
            out[s].lerp_(hp, zh[s])
        hbuf[:bs].copy_(out[s])
    return out, hbuf, (gates, an, hprev, hprev_m)


def backward(gout: Tensor, ghn: Tensor, saved, w_hh: Tensor, has_bias: bool, mask: Tensor | None,
             batch_sizes: tuple[int, ...], reverse: bool, zh: Tensor | None = None):  # fmt: skip
    """Returns ``d xp, d h0, d W_hh, d b_hh`` (``None`` without bias)."""
    gates, an, hprev, hprev_m = saved
    H = hprev.shape[1]
    # d a = [dr', dz', dn' ⊙ r]: its r, z parts are d xp's, so only the n-part is stacked
    dxp, dan, dat = torch.empty_like(gates), torch.empty_like(an), gates.new_empty(ghn.shape[0], 3 * H)
    dhbuf = ghn.clone()
    t1, t2 = hprev.new_empty(ghn.shape[0], H), hprev.new_empty(ghn.shape[0], H)
    lin_t = Linear(w_hh.t(), ghn.shape[0])
    dhz = torch.empty_like(ghn)
    for off, bs in reversed(schedule(batch_sizes, reverse)):
        s = slice(off, off + bs)
        g, dx, da, dh, tmp = gates[s], dxp[s], dat[:bs], t1[:bs], t2[:bs]
        r, z, n = g[:, :H], g[:, H : 2 * H], g[:, 2 * H :]
        dr, dz, dn = dx[:, :H], dx[:, H : 2 * H], dx[:, 2 * H :]
        torch.add(gout[s], dhbuf[:bs], out=dh)
        if zh is not None:  # h_t = lerp(h̃_t, h_{t-1}, zh): split the gradient
            torch.mul(dh, zh[s], out=dhz[:bs])
            dh.sub_(dhz[:bs])
        torch.mul(n, n, out=dn).neg_().add_(1).mul_(dh)  # dh (1 - n²)
        torch.addcmul(dn, dn, z, value=-1, out=dn)  # ... ⊙ (1 - z)
        torch.addcmul(z, z, z, value=-1, out=dz).mul_(dh)  # dh z(1-z)
        torch.sub(hprev[s], n, out=tmp)
        dz.mul_(tmp)
        torch.addcmul(r, r, r, value=-1, out=dr).mul_(dn).mul_(an[s])
        da[:, : 2 * H].copy_(dx[:, : 2 * H])
        torch.mul(dn, r, out=dan[s])
        da[:, 2 * H :].copy_(dan[s])
        db = dhbuf[:bs]
        if mask is None:
            db.copy_(lin_t(da))
        else:
            torch.mul(lin_t(da), mask[:bs], out=db)
        db.addcmul_(dh, z)
        if zh is not None:
            db.add_(dhz[:bs])
    drz = dxp[:, : 2 * H]
    dw_hh = torch.cat([mm_tn(drz, hprev_m), mm_tn(dan, hprev_m)])
    db_hh = torch.cat([drz.sum(0), dan.sum(0)]) if has_bias else None
    return dxp, dhbuf, dw_hh, db_hh
