"""Fused directions of the normalized cells in pure PyTorch: explicit BPTT with normalization.

Layer norm (Ba et al. 2016) and recurrent batch norm (Cooijmans et al. 2016) as
:mod:`rnnkit.cells.norm` defines them. The input group (``W_ih x_t``) depends on ``x`` only
and is normalized for all steps at once outside the loop (:mod:`.norm_ops`, autograd); ``xp``
here already holds it, biases included. Inside the loop one *group* is normalized per step:
the recurrent vector ``r_t = (h_{t-1} ⊙ m) W_hhᵀ`` (``G`` features), and for the LSTM also
the cell ``c_t`` (``H`` features)::

    x̂ = (r - μ) ⊙ ρ,   y = γ ⊙ x̂ (+ β)                            ρ = 1/sqrt(σ² + ε)
    mode LN        μ, σ² over the features of each row             ρ saved (N, 1)
    mode BN_TRAIN  μ, σ² over the rows of the step (biased σ²)     μ, σ², ρ saved (T, F)
    mode BN_EVAL   μ, ρ given per slot (running statistics)        ``st (2, S, F)``

Backward of a group, from ``dy`` (gradient of ``y``): ``dx̂ = γ ⊙ dy`` and
``dr = ρ ⊙ (dx̂ - mean(dx̂) - x̂ ⊙ mean(dx̂ ⊙ x̂))`` with means over the same axis as the
statistics (``dr = ρ ⊙ dx̂`` for BN_EVAL); after the loop ``dγ = Σ dy ⊙ x̂``, ``dβ = Σ dy``
over all rows, and ``dW_hh = Σ_t drᵀ (h_{t-1} ⊙ m)`` as one GEMM.

Per family (``a`` the recurrent group after normalization)::

    LSTM  a = xp + y_hh;  i, f, o = σ(.), g = tanh(.);  c_t = f c_{t-1} + i g
          h_t = o ⊙ tanh(y_c)   with y_c = norm_c(c_t)   (c_t carried unnormalized; proj_size)
          peepholes p (3H,): a_i, a_f += p_i ⊙ c_{t-1}, p_f ⊙ c_{t-1};  a_o += p_o ⊙ c̃_t
    GRU   a = y_hh + b_hh;  r, z = σ(xp_rz + a_rz);  n = tanh(xp_n + r ⊙ a_n);  h = (h - n) z + n
    RNN   h_t = act(xp + y_hh)

Recurrent dropout (``mask (B, P)`` on ``h_{t-1}`` before the GEMM) and zoneout weights
``zh (N, P)``, ``zc (N, H)`` (``s_t = lerp(s̃_t, s_{t-1}, z)``) as in :mod:`.lstm`. BN_TRAIN
statistics are indexed by the processing order ``k`` of the steps (the slot of the running
statistics, see :func:`rnnkit.cells.norm.step_slots`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..cells.norm import EPS
from ._common import load_prev, schedule
from ._gemm import Linear, mm_tn

LN, BN_TRAIN, BN_EVAL = 1, 2, 3


class _Group:
    """One normalized group over a direction: the saved ``x̂ (N, F)``, ``ρ`` and statistics."""

    def __init__(self, mode: int, N: int, T: int, F: int, like: Tensor, g: Tensor, s: Tensor | None,
                 st: Tensor | None) -> None:  # fmt: skip
        self.mode, self.g, self.s, self.st, self.F = mode, g, s, st, F
        e = like.new_empty
        self.xh = e(N, F)
        self.rs = e(N, 1) if mode == LN else e(T, F) if mode == BN_TRAIN else e(0)
        self.mean, self.var = (e(T, F), e(T, F)) if mode == BN_TRAIN else (e(0), e(0))

    def __call__(self, r: Tensor, s: slice, k: int) -> Tensor:
        """``y`` of the raw group ``r (bs, F)`` at rows ``s``, processing step ``k``."""
        xh = self.xh[s]
        if self.mode == LN:
            res = torch.native_layer_norm(r, [self.F], None, None, EPS)
            xh.copy_(res[0])
            self.rs[s].copy_(res[2])
        elif self.mode == BN_TRAIN:
            var, mean = torch.var_mean(r, 0, correction=0)
            self.mean[k].copy_(mean)
            self.var[k].copy_(var)
            torch.rsqrt(var + EPS, out=self.rs[k])
            torch.sub(r, mean, out=xh).mul_(self.rs[k])
        else:
            torch.sub(r, self.st[0, s], out=xh).mul_(self.st[1, s])  # type: ignore[index]
        return xh * self.g if self.s is None else torch.addcmul(self.s, xh, self.g)

    def saved(self) -> list[Tensor]:
        return [self.xh, self.rs]


def norm_backward(mode: int, dy: Tensor, xh: Tensor, rs: Tensor, g: Tensor, out: Tensor) -> Tensor:
    """``dr`` of one step's group into ``out`` (see the module docstring); ``rs``: ``ρ`` of the
    step's rows (LN ``(bs, 1)``, BN_TRAIN ``(F,)``, BN_EVAL ``(bs, F)``)."""
    dxh = torch.mul(dy, g, out=out)
    if mode != BN_EVAL:
        dim = 1 if mode == LN else 0
        m1 = dxh.mean(dim, keepdim=True)
        m2 = (dxh * xh).mean(dim, keepdim=True)
        dxh.sub_(m1).sub_(xh * m2)
    return dxh.mul_(rs)


def peephole_grad(dxp: Tensor, gates: Tensor, cprev: Tensor) -> Tensor:
    """``d p (3H,)`` of the LSTM's peepholes ``(p_i, p_f, p_o)`` after the loop, from the gate
    gradients ``d xp (N, 4H)`` (of the pre-activations), the saved gates and ``c_{t-1}``:
    ``Σ da_i ⊙ c_{t-1}``, ``Σ da_f ⊙ c_{t-1}``, ``Σ da_o ⊙ c~_t`` with ``c~_t = f c_{t-1} + i g``."""
    H = cprev.shape[1]
    i, f, g = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H]
    ct = torch.addcmul(f * cprev, i, g)
    dif = (dxp[:, : 2 * H].view(-1, 2, H) * cprev.unsqueeze(1)).sum(0).reshape(-1)
    return torch.cat([dif, (dxp[:, 3 * H :] * ct).sum(0)])


def row_slots(bsz: Sequence[int], reverse: bool, slots: int, device=None) -> Tensor:
    """Running-statistics slot of every packed row in evaluation (as
    :func:`rnnkit.cells.norm.step_slots`): the number of steps its sequence has taken in this
    direction, clamped to ``slots - 1``."""
    T, B = len(bsz), bsz[0]
    if bsz[-1] == B:  # dense: built on the device, no host-to-device copy (none in a CUDA graph)
        t = torch.arange(T, device=device).unsqueeze(1).expand(T, B).reshape(-1)
        return (T - 1 - t if reverse else t).clamp(max=slots - 1)
    counts = torch.tensor(list(bsz), device=device)
    t = torch.repeat_interleave(torch.arange(T, device=device), counts)
    if not reverse:
        return t.clamp(max=slots - 1)
    offsets = torch.cumsum(counts, 0) - counts
    b = torch.arange(t.shape[0], device=device) - offsets[t]
    lengths = (counts.unsqueeze(0) > torch.arange(B, device=device).unsqueeze(1)).sum(1)
    return (lengths[b] - 1 - t).clamp(max=slots - 1)


def _per_row(mode: int, st: Tensor | None, bsz: Sequence[int], reverse: bool) -> Tensor | None:
    """BN_EVAL's per-slot statistics ``(2, S, F)`` gathered per row ``(2, N, F)``."""
    if mode != BN_EVAL or st is None:
        return st
    return st[:, row_slots(bsz, reverse, st.shape[1], st.device)]


def _rho(mode: int, rs: Tensor, st: Tensor | None, s: slice, k: int) -> Tensor:
    return rs[s] if mode == LN else rs[k] if mode == BN_TRAIN else st[1, s]  # type: ignore[index]


def _affine_grads(dy: Tensor, xh: Tensor, shift: bool) -> tuple[Tensor, Tensor | None]:
    return (dy * xh).sum(0), (dy.sum(0) if shift else None)


def forward(kind: str, mode: int, xp: Tensor, h0: Tensor, c0: Tensor | None, w_hh: Tensor,
            b_hh: Tensor | None, w_hr: Tensor | None, mask: Tensor | None, zh: Tensor | None,
            zc: Tensor | None, g_hh: Tensor, s_hh: Tensor | None, g_c: Tensor | None,
            s_c: Tensor | None, st_hh: Tensor | None, st_c: Tensor | None, w_peep: Tensor | None,
            batch_sizes: tuple[int, ...], reverse: bool):  # fmt: skip
    """``out (N, P), h_n, c_n`` (empty unless LSTM), the BN_TRAIN statistics ``[μ_hh, σ²_hh,
    μ_c, σ²_c]`` (``(T, F)`` in processing order, else empty) and the saved tensors."""
    N, B, P, T = xp.shape[0], h0.shape[0], h0.shape[1], len(batch_sizes)
    G = w_hh.shape[0]
    st_hh, st_c = (_per_row(mode, st, batch_sizes, reverse) for st in (st_hh, st_c))
    e = xp.new_empty
    hbuf, out, hprev = h0.clone(), e(N, P), e(N, P)
    hh = _Group(mode, N, T, G, xp, g_hh, s_hh, st_hh)
    lin = Linear(w_hh, B)
    steps = schedule(batch_sizes, reverse)
    if kind == "lstm":
        H = c0.shape[1]  # type: ignore[union-attr]
        cg = _Group(mode, N, T, H, xp, g_c, s_c, st_c)  # type: ignore[arg-type]
        gates, cprev, tanhc = e(N, 4 * H), e(N, H), e(N, H)
        hraw = e(N, H) if w_hr is not None else e(0)
        cbuf = c0.clone()  # type: ignore[union-attr]
        lin_r = Linear(w_hr, B) if w_hr is not None else None
        for k, (off, bs) in enumerate(steps):
            s = slice(off, off + bs)
            hp, g, cb = load_prev(hbuf, mask, bs, hprev[s]), gates[s], cbuf[:bs]
            a = hh(lin(hp), s, k).add_(xp[s])
            if w_peep is not None:  # i, f see c_{t-1}
                a[:, :H].addcmul_(w_peep[:H], cb)
                a[:, H : 2 * H].addcmul_(w_peep[H : 2 * H], cb)
            torch.sigmoid(a[:, : 2 * H], out=g[:, : 2 * H])
            torch.tanh(a[:, 2 * H : 3 * H], out=g[:, 2 * H : 3 * H])
            cprev[s].copy_(cb)
            cb.mul_(g[:, H : 2 * H]).addcmul_(g[:, :H], g[:, 2 * H : 3 * H])
            if w_peep is not None:  # o sees the candidate c~_t (before zoneout)
                a[:, 3 * H :].addcmul_(w_peep[2 * H :], cb)
            torch.sigmoid(a[:, 3 * H :], out=g[:, 3 * H :])
            tc = torch.tanh(cg(cb, s, k), out=tanhc[s])
            if lin_r is None:
                torch.mul(g[:, 3 * H :], tc, out=out[s])
            else:
                out[s].copy_(lin_r(torch.mul(g[:, 3 * H :], tc, out=hraw[s])))
            if zc is not None:
                cb.lerp_(cprev[s], zc[s])
            if zh is not None:
                out[s].lerp_(hbuf[:bs], zh[s])
            hbuf[:bs].copy_(out[s])
        stats = [hh.mean, hh.var, cg.mean, cg.var]
        return out, hbuf, cbuf, stats, [gates, cprev, tanhc, hprev, hraw, *hh.saved(), *cg.saved()]
    stats = [hh.mean, hh.var, e(0), e(0)]
    if kind == "gru":
        H = P
        gates, an = e(N, 3 * H), e(N, H)
        hprev_m = e(N, H) if mask is not None else e(0)
        for k, (off, bs) in enumerate(steps):
            s = slice(off, off + bs)
            hp, g, x = hprev[s].copy_(hbuf[:bs]), gates[s], xp[s]
            hm = hp if mask is None else torch.mul(hp, mask[:bs], out=hprev_m[s])
            a = hh(lin(hm), s, k)
            if b_hh is not None:
                a.add_(b_hh)
            an[s].copy_(a[:, 2 * H :])
            torch.add(x[:, : 2 * H], a[:, : 2 * H], out=g[:, : 2 * H]).sigmoid_()
            n = torch.addcmul(x[:, 2 * H :], g[:, :H], a[:, 2 * H :], out=g[:, 2 * H :]).tanh_()
            # h = (h_{t-1} - n) z + n as torch's GRUCell (and the C++ kernel), not lerp(n, h_{t-1}, z)
            torch.sub(hp, n, out=out[s]).mul_(g[:, H : 2 * H]).add_(n)
            if zh is not None:
                out[s].lerp_(hp, zh[s])
            hbuf[:bs].copy_(out[s])
        return out, hbuf, e(0), stats, [gates, an, hprev, hprev_m, *hh.saved()]
    hnew = e(N, P) if zh is not None else e(0)  # h̃ (for act') before zoneout, else out
    for k, (off, bs) in enumerate(steps):
        s = slice(off, off + bs)
        hp = load_prev(hbuf, mask, bs, hprev[s])
        a = hh(lin(hp), s, k).add_(xp[s])
        o = out[s] if zh is None else hnew[s]
        torch.clamp(a, min=0, out=o) if kind == "rnn_relu" else torch.tanh(a, out=o)
        if zh is not None:
            torch.lerp(o, hbuf[:bs], zh[s], out=out[s])
        hbuf[:bs].copy_(out[s])
    return out, hbuf, e(0), stats, [hnew, hprev, *hh.saved()]


def backward(kind: str, mode: int, gout: Tensor, ghn: Tensor, gcn: Tensor, out: Tensor, saved,
             w_hh: Tensor, has_bias: bool, w_hr: Tensor | None, mask: Tensor | None, zh: Tensor | None,
             zc: Tensor | None, g_hh: Tensor, shift_hh: bool, g_c: Tensor | None, shift_c: bool,
             st_hh: Tensor | None, st_c: Tensor | None, w_peep: Tensor | None, batch_sizes: tuple[int, ...],
             reverse: bool):  # fmt: skip
    """``[d xp, d h0, d c0, d W_hh, d b_hh, d W_hr, dγ_hh, dβ_hh, dγ_c, dβ_c]`` (``None`` where
    absent). ``out`` is the forward's output (the RNN's ``h̃`` without zoneout). With peepholes
    the recurrence carries their terms; their own gradient is left to the caller (from ``d xp``,
    the gates and ``c_{t-1}``: :func:`peephole_grad`)."""
    B = ghn.shape[0]
    st_hh, st_c = (_per_row(mode, st, batch_sizes, reverse) for st in (st_hh, st_c))
    steps = list(enumerate(schedule(batch_sizes, reverse)))[::-1]
    dhbuf = ghn.clone()
    dhz = torch.empty_like(ghn)  # zoneout's direct path to h_{t-1}
    lin_t = Linear(w_hh.t(), B)
    dr_all = out.new_empty(out.shape[0], w_hh.shape[0])  # d r_t: gradient of the raw group

    def split_h(dst, s, bs):  # dh of this step, minus zoneout's direct part (kept in dhz)
        torch.add(gout[s], dhbuf[:bs], out=dst)
        if zh is not None:
            torch.mul(dst, zh[s], out=dhz[:bs])
            dst.sub_(dhz[:bs])
        return dst

    def recur(dr, bs):  # dh_{t-1} = (dr W_hh) ⊙ m (+ zoneout's direct part)
        dhp = dhbuf[:bs]
        torch.mul(lin_t(dr), mask[:bs], out=dhp) if mask is not None else dhp.copy_(lin_t(dr))
        return dhp

    res: list[Tensor | None] = [None] * 10
    if kind == "lstm":
        gates, cprev, tanhc, hprev, hraw, xh, rs, xc, rc = saved
        H = tanhc.shape[1]
        dgates, dyc = torch.empty_like(gates), torch.empty_like(tanhc)
        dcbuf, dcz, tmp = gcn.clone(), torch.empty_like(gcn), gcn.new_empty(B, H)
        dh_all = torch.empty_like(hprev) if w_hr is not None else None
        t2 = gcn.new_empty(B, H)
        lin_rt = Linear(w_hr.t(), B) if w_hr is not None else None
        for k, (off, bs) in steps:
            s = slice(off, off + bs)
            g, dg, tc, dc = gates[s], dgates[s], tanhc[s], dcbuf[:bs]
            i, f, gg, o = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H], g[:, 3 * H :]
            di, df, dgg, do = dg[:, :H], dg[:, H : 2 * H], dg[:, 2 * H : 3 * H], dg[:, 3 * H :]
            dhp = split_h(tmp[:bs] if dh_all is None else dh_all[s], s, bs)
            if zc is not None:
                torch.mul(dc, zc[s], out=dcz[:bs])
                dc.sub_(dcz[:bs])
            dh = dhp if lin_rt is None else lin_rt(dhp)
            torch.addcmul(o, o, o, value=-1, out=do).mul_(dh).mul_(tc)  # dh tanh(y_c) o(1-o)
            dy = torch.mul(tc, tc, out=dyc[s]).neg_().add_(1).mul_(o).mul_(dh)  # d y_c
            dc.add_(norm_backward(mode, dy, xc[s], _rho(mode, rc, st_c, s, k), g_c, t2[:bs]))  # type: ignore[arg-type]
            if w_peep is not None:  # o's peephole on c~_t
                dc.addcmul_(do, w_peep[2 * H :])
            torch.addcmul(i, i, i, value=-1, out=di).mul_(gg).mul_(dc)
            torch.addcmul(f, f, f, value=-1, out=df).mul_(cprev[s]).mul_(dc)
            torch.mul(gg, gg, out=dgg).neg_().add_(1).mul_(i).mul_(dc)
            dc.mul_(f)
            if w_peep is not None:  # i's and f's on c_{t-1}
                dc.addcmul_(di, w_peep[:H]).addcmul_(df, w_peep[H : 2 * H])
            if zc is not None:
                dc.add_(dcz[:bs])
            dr = norm_backward(mode, dg, xh[s], _rho(mode, rs, st_hh, s, k), g_hh, dr_all[s])
            recur(dr, bs)
            if zh is not None:
                dhbuf[:bs].add_(dhz[:bs])
        res[0], res[2] = dgates, dcbuf
        res[5] = mm_tn(dh_all, hraw) if dh_all is not None else None
        res[8], res[9] = _affine_grads(dyc, xc, shift_c)
        da_all, hin = dgates, hprev
    elif kind == "gru":
        gates, an, hprev, hprev_m, xh, rs = saved
        H = hprev.shape[1]
        dxp, da_all, dh = torch.empty_like(gates), torch.empty_like(gates), hprev.new_empty(B, H)
        tmp = hprev.new_empty(B, H)
        for k, (off, bs) in steps:
            s = slice(off, off + bs)
            g, dx, da, d = gates[s], dxp[s], da_all[s], dh[:bs]
            r, z, n = g[:, :H], g[:, H : 2 * H], g[:, 2 * H :]
            dr_, dz, dn = dx[:, :H], dx[:, H : 2 * H], dx[:, 2 * H :]
            split_h(d, s, bs)
            torch.mul(n, n, out=dn).neg_().add_(1).mul_(d)  # dh (1 - n²)
            torch.addcmul(dn, dn, z, value=-1, out=dn)  # ... ⊙ (1 - z)
            torch.addcmul(z, z, z, value=-1, out=dz).mul_(d).mul_(torch.sub(hprev[s], n, out=tmp[:bs]))
            torch.addcmul(r, r, r, value=-1, out=dr_).mul_(dn).mul_(an[s])
            da[:, : 2 * H].copy_(dx[:, : 2 * H])
            torch.mul(dn, r, out=da[:, 2 * H :])
            dr = norm_backward(mode, da, xh[s], _rho(mode, rs, st_hh, s, k), g_hh, dr_all[s])
            recur(dr, bs).addcmul_(d, z)
            if zh is not None:
                dhbuf[:bs].add_(dhz[:bs])
        res[0] = dxp
        res[4] = da_all.sum(0) if has_bias else None
        hin = hprev if mask is None else hprev_m
    else:
        hnew, hprev, xh, rs = saved
        h = out if zh is None else hnew
        da_all = torch.empty_like(out)
        for k, (off, bs) in steps:
            s = slice(off, off + bs)
            da, o = split_h(da_all[s], s, bs), h[s]
            if kind == "rnn_relu":
                da.masked_fill_(o <= 0, 0)  # torch's relu backward: a NaN o passes da
            else:
                da.mul_(torch.addcmul(torch.ones_like(o), o, o, value=-1))
            recur(norm_backward(mode, da, xh[s], _rho(mode, rs, st_hh, s, k), g_hh, dr_all[s]), bs)
            if zh is not None:
                dhbuf[:bs].add_(dhz[:bs])
        res[0], hin = da_all, hprev
    res[1], res[3] = dhbuf, mm_tn(dr_all, hin)
    res[6], res[7] = _affine_grads(da_all, xh, shift_hh)
    return res
