"""Fused LSTM direction in pure PyTorch: explicit BPTT with preallocated buffers.

Forward per step (``xp`` already holds ``W_ih x_t + b_ih + b_hh``, gate order i, f, g, o)::

    a_t = xp_t + (h_{t-1} ⊙ m) W_hhᵀ            (one GEMM, see _gemm)
    i, f, o = σ(a_i, a_f, a_o);  g = tanh(a_g)   (in place)
    c_t = f ⊙ c_{t-1} + i ⊙ g;  h_t = o ⊙ tanh(c_t)   (h_t = h_t W_hrᵀ with proj_size)

Backward per step (``dh`` = output grad + recurrent grad; ``ĥ`` = o ⊙ tanh c before the
projection)::

    dĥ = dh W_hr (proj) or dh;   dc += dĥ ⊙ o ⊙ (1 - tanh²c)
    da_o = dĥ ⊙ tanh c ⊙ o(1-o);  da_i = dc ⊙ g ⊙ i(1-i)
    da_f = dc ⊙ c_{t-1} ⊙ f(1-f); da_g = dc ⊙ i ⊙ (1-g²)
    dc_{t-1} = dc ⊙ f;  dh_{t-1} = (da W_hh) ⊙ m

and after the loop the weight gradients as single GEMMs over all ``N`` rows:
``dW_hh = daᵀ (h_prev ⊙ m)``, ``dW_hr = dhᵀ ĥ``; ``d xp = da`` flows back through
``cell.project_input`` by autograd. ``m`` is the optional recurrent-dropout mask ``(B, P)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import load_prev, schedule
from ._gemm import Linear, mm_tn


def forward(xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor | None,
            mask: Tensor | None, batch_sizes: tuple[int, ...], reverse: bool,
            zh: Tensor | None = None, zc: Tensor | None = None, w_peep: Tensor | None = None):  # fmt: skip
    """Returns ``out (N, P), h_n (B, P), c_n (B, H)`` and the saved tensors.

    ``w_peep (3H,)``: optional peephole weights ``p_i, p_f, p_o`` (Gers & Schmidhuber 2000):
    ``i, f = σ(a_i + p_i ⊙ c_{t-1}, a_f + p_f ⊙ c_{t-1})``, ``o = σ(a_o + p_o ⊙ c_t)``.

    ``zh (N, P)``, ``zc (N, H)``: optional zoneout weights per output row (Krueger et al.
    2017): ``h_t = lerp(h̃_t, h_{t-1}, zh_t)``, ``c_t = lerp(c̃_t, c_{t-1}, zc_t)``.
    """
    N, H, P = xp.shape[0], c0.shape[1], h0.shape[1]
    new = xp.new_empty
    gates, cprev, tanhc, hprev = new(N, 4 * H), new(N, H), new(N, H), new(N, P)
    out = new(N, P)
    hraw = new(N, H) if w_hr is not None else out
    hbuf, cbuf = h0.clone(), c0.clone()
    peep = None if w_peep is None else w_peep.split(H)
    cnew = new(N, H) if peep is not None else new(0)  # c_t, for p_o's gradient
    lin = Linear(w_hh, h0.shape[0])
    lin_r = Linear(w_hr, h0.shape[0]) if w_hr is not None else None
    for off, bs in schedule(batch_sizes, reverse):
        s = slice(off, off + bs)
        hp, g, cb = hprev[s], gates[s], cbuf[:bs]
        load_prev(hbuf, mask, bs, hp)
        a = lin(hp, base=xp[s])
        if peep is not None:
            a[:, :H].addcmul_(peep[0], cb)
            a[:, H : 2 * H].addcmul_(peep[1], cb)
        torch.sigmoid(a[:, : 2 * H], out=g[:, : 2 * H])
        torch.tanh(a[:, 2 * H : 3 * H], out=g[:, 2 * H : 3 * H])
        if peep is None:
            torch.sigmoid(a[:, 3 * H :], out=g[:, 3 * H :])
        cprev[s].copy_(cb)
        cb.mul_(g[:, H : 2 * H]).addcmul_(g[:, :H], g[:, 2 * H : 3 * H])
        if peep is not None:
            cnew[s].copy_(cb)
            torch.sigmoid(a[:, 3 * H :].addcmul_(peep[2], cb), out=g[:, 3 * H :])
        tc = tanhc[s]
        torch.tanh(cb, out=tc)
        torch.mul(g[:, 3 * H :], tc, out=hraw[s])
        if lin_r is not None:
            out[s].copy_(lin_r(hraw[s]))
        if zc is not None:
            cb.lerp_(cprev[s], zc[s])
        if zh is not None:
            out[s].lerp_(hbuf[:bs], zh[s])
        hbuf[:bs].copy_(out[s])
    return out, hbuf, cbuf, (gates, cprev, tanhc, hprev, hraw, cnew)


def backward(gout: Tensor, ghn: Tensor, gcn: Tensor, saved, w_hh: Tensor, w_hr: Tensor | None,
             mask: Tensor | None, batch_sizes: tuple[int, ...], reverse: bool,
             zh: Tensor | None = None, zc: Tensor | None = None, w_peep: Tensor | None = None):  # fmt: skip
    """Returns ``d xp, d h0, d c0, d W_hh, d W_hr, d w_peep`` (``None`` where absent)."""
    gates, cprev, tanhc, hprev, hraw, cnew = saved
    H = tanhc.shape[1]
    dgates = torch.empty_like(gates)
    dh_all = torch.empty_like(hprev) if w_hr is not None else None
    dhbuf, dcbuf = ghn.clone(), gcn.clone()
    t1, t2 = gates.new_empty(ghn.shape[0], H), gates.new_empty(ghn.shape[0], H)
    dhz, dcz = torch.empty_like(ghn), torch.empty_like(gcn)  # zoneout's direct paths to t-1
    lin_t = Linear(w_hh.t(), ghn.shape[0])
    lin_rt = Linear(w_hr.t(), ghn.shape[0]) if w_hr is not None else None
    for off, bs in reversed(schedule(batch_sizes, reverse)):
        s = slice(off, off + bs)
        g, dg, tc, dc, a, b = gates[s], dgates[s], tanhc[s], dcbuf[:bs], t1[:bs], t2[:bs]
        i, f, gg, o = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H :]
        di, df, dgg, do = dg[:, :H], dg[:, H : 2 * H], dg[:, 2 * H : 3 * H], dg[:, 3 * H :]
        dhp = b if w_hr is None else dh_all[s]  # type: ignore[index]
        torch.add(gout[s], dhbuf[:bs], out=dhp)
        if zh is not None:  # h_t = lerp(h̃_t, h_{t-1}, zh): split the gradient
            torch.mul(dhp, zh[s], out=dhz[:bs])
            dhp.sub_(dhz[:bs])
        if zc is not None:
            torch.mul(dc, zc[s], out=dcz[:bs])
            dc.sub_(dcz[:bs])
        dh = dhp if w_hr is None else lin_rt(dhp)  # type: ignore[misc]
        torch.addcmul(o, o, o, value=-1, out=a)  # o(1-o)
        torch.mul(dh, tc, out=do).mul_(a)
        torch.mul(tc, tc, out=a).neg_().add_(1).mul_(o).mul_(dh)  # dh o (1 - tanh²c)
        dc.add_(a)
        if w_peep is not None:  # o's pre-activation saw c_t
            dc.addcmul_(do, w_peep[2 * H :])
        torch.addcmul(i, i, i, value=-1, out=di).mul_(gg).mul_(dc)
        torch.addcmul(f, f, f, value=-1, out=df).mul_(cprev[s]).mul_(dc)
        torch.mul(gg, gg, out=dgg).neg_().add_(1).mul_(i).mul_(dc)
        dc.mul_(f)
        if w_peep is not None:  # i's and f's pre-activations saw c_{t-1}
            dc.addcmul_(di, w_peep[:H]).addcmul_(df, w_peep[H : 2 * H])
        if zc is not None:
            dc.add_(dcz[:bs])
        if mask is None:
            dhbuf[:bs].copy_(lin_t(dg))
        else:
            torch.mul(lin_t(dg), mask[:bs], out=dhbuf[:bs])
        if zh is not None:
            dhbuf[:bs].add_(dhz[:bs])
    dw_hh = mm_tn(dgates, hprev)
    dw_hr = mm_tn(dh_all, hraw) if dh_all is not None else None
    dw_peep = None
    if w_peep is not None:
        dif = dgates[:, : 2 * H].view(-1, 2, H).mul(cprev.unsqueeze(1)).sum(0).reshape(-1)
        dw_peep = torch.cat([dif, (dgates[:, 3 * H :] * cnew).sum(0)])
    return dgates, dhbuf, dcbuf, dw_hh, dw_hr, dw_peep
