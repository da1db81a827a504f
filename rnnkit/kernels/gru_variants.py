"""Fused GRU direction for the variants of :mod:`rnnkit.cells.gru`, in pure PyTorch.

One kernel, parameterized by ``flags`` (:func:`flags_of`), covers Cho et al.'s (2014)
original GRU (``reset_after=False``: the reset gate before the recurrent product) and the
three architectures of Jozefowicz, Zaremba & Sutskever (2015), MUT1–3, each with either
reset placement. ``xp (N, 3H)`` is the cell's ``project_input`` (``[x_r, x_z, x_n]``, bias
``b_i·`` included; MUT1's ``tanh(x)`` and MUT2's ``x`` in ``r`` are already there), and
``W_hh``/``b_hh`` hold the hidden blocks the variant has (``r, z, n``; MUT1 ``r, n``).

Each hidden block reads one *source*: ``h̄ = h_{t-1} ⊙ m`` (``m`` the optional recurrent-
dropout mask), ``tanh(h̄)`` (MUT3's ``z``) or ``r ⊙ h̄`` (``n`` when ``reset_after=False``).
Per step, one GEMM over the blocks that read ``h̄`` (group ``D``), and one more per other
source (it depends on ``r``, so cannot join the first)::

    a_D = h̄ W_Dᵀ + b_D;   r = σ(x_r + a_r);   z = σ(x_z + a_z) or σ(x_z) (MUT1)
    n = tanh(x_n + r ⊙ a_n)              (reset_after=True, a_n in group D)
    n = tanh(x_n + (r ⊙ h̄) W_nᵀ + b_n)   (reset_after=False)
    h_t = (h_{t-1} - n) ⊙ z + n          (Cho, torch's GRUCell: u = 1 - z below)
    h_t = n ⊙ z + h_{t-1} ⊙ (1 - z)      (MUT, z gates n: u = z), each computed as written

Backward per step (``dh`` after the zoneout split)::

    dn' = dh ⊙ u ⊙ (1 - n²);   dz' = ± dh ⊙ (n - h_{t-1}) ⊙ z(1-z)   (+ for MUT)
    reset_after:  dr' = dn' ⊙ a_n ⊙ r(1-r);   da_n = dn' ⊙ r
    else:         g = dn' W_n;   dr' = g ⊙ h̄ ⊙ r(1-r);   dh̄ += g ⊙ r
    dh̄ += da_D W_D  (+ (dz' W_z) ⊙ (1 - tanh²h̄) for MUT3)
    dh_{t-1} = dh̄ ⊙ m + dh ⊙ (1 - u)

``d xp = [dr', dz', dn']``; after the loop each block's weight gradient is one GEMM over all
rows against its source (``h̄``, ``tanh h̄`` or ``r ⊙ h̄``, rebuilt from the saved tensors).

Saved: ``gates (N, 3H)`` = ``[r, z, n]``, ``h_{t-1} (N, H)``, and where they exist
``h̄ (N, H)`` (mask), ``a_n (N, H)`` (reset_after), ``tanh h̄ (N, H)`` (MUT3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells.base import Cell
from ..cells.gru import GRUCellMath
from ._common import schedule
from ._gemm import Linear, mm_tn

MUT1, MUT2, MUT3, RESET_AFTER = 1, 2, 3, 4
_VARIANT_CODES = {None: 0, "mut1": MUT1, "mut2": MUT2, "mut3": MUT3}


def flags_of(cell: Cell) -> int | None:
    """``variant code | RESET_AFTER`` for a GRU cell this kernel runs, ``None`` with a norm."""
    if type(cell) is not GRUCellMath or cell.norm is not None:
        return None
    return _VARIANT_CODES[cell.variant] | (RESET_AFTER if cell.reset_after else 0)


class Layout:
    """Which hidden blocks exist, what each reads, and their rows in ``W_hh``."""

    def __init__(self, flags: int) -> None:
        variant = flags & 3
        self.reset_after, self.cand_z = bool(flags & RESET_AFTER), variant != 0
        self.hid = "rn" if variant == MUT1 else "rzn"
        self.zsrc = {MUT1: None, MUT3: "t"}.get(variant, "h")
        self.D = "r" + ("z" if self.zsrc == "h" else "") + ("n" if self.reset_after else "")

    def rows(self, w: Tensor | None, blocks: str, H: int) -> Tensor | None:
        """The rows of ``w`` (weight or bias) of ``blocks``, stacked."""
        if w is None or not blocks:
            return None
        parts = [w[self.hid.index(k) * H : (self.hid.index(k) + 1) * H] for k in blocks]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def forward(flags: int, xp: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor | None, mask: Tensor | None,
            batch_sizes: tuple[int, ...], reverse: bool, zh: Tensor | None = None):  # fmt: skip
    """Returns ``out (N, H), h_n (B, H)`` and the saved tensors; ``zh (N, H)`` optional
    zoneout weights: ``h_t = lerp(h̃_t, h_{t-1}, zh_t)``."""
    L = Layout(flags)
    N, B, H = xp.shape[0], h0.shape[0], h0.shape[1]
    new = xp.new_empty
    gates, hprev, out = new(N, 3 * H), new(N, H), new(N, H)
    hprev_m = new(N, H) if mask is not None else new(0)
    an = new(N, H) if L.reset_after else new(0)
    th = new(N, H) if L.zsrc == "t" else new(0)
    rh = new(B, H)
    lin_d, b_d = Linear(L.rows(w_hh, L.D, H), B), L.rows(b_hh, L.D, H)
    if L.zsrc == "t":
        lin_z, b_z = Linear(L.rows(w_hh, "z", H), B), L.rows(b_hh, "z", H)
    if not L.reset_after:
        lin_n, b_n = Linear(L.rows(w_hh, "n", H), B), L.rows(b_hh, "n", H)
    hbuf = h0.clone()
    for off, bs in schedule(batch_sizes, reverse):
        s = slice(off, off + bs)
        hp, g, x = hprev[s], gates[s], xp[s]
        hp.copy_(hbuf[:bs])
        hm = hp if mask is None else torch.mul(hp, mask[:bs], out=hprev_m[s])
        a = lin_d(hm, bias=b_d)
        r, z, n = g[:, :H], g[:, H : 2 * H], g[:, 2 * H :]
        torch.add(x[:, :H], a[:, :H], out=r).sigmoid_()
        if L.zsrc == "h":
            torch.add(x[:, H : 2 * H], a[:, H : 2 * H], out=z).sigmoid_()
        elif L.zsrc == "t":
            torch.tanh(hm, out=th[s])
            torch.add(x[:, H : 2 * H], lin_z(th[s], bias=b_z), out=z).sigmoid_()
        else:
            torch.sigmoid(x[:, H : 2 * H], out=z)
        if L.reset_after:
            an[s].copy_(a[:, len(L.D) * H - H :])
            torch.addcmul(x[:, 2 * H :], r, an[s], out=n).tanh_()
        else:
            torch.mul(r, hm, out=rh[:bs])
            torch.add(x[:, 2 * H :], lin_n(rh[:bs], bias=b_n), out=n).tanh_()
        # not lerp, NaN for an infinite h_{t-1} where these keep the inf (as the C++ kernel)
        if L.cand_z:  # n z + h (1 - z) as the paper writes it: z gates the candidate
            torch.mul(n, z, out=out[s]).addcmul_(hp, 1 - z)
        else:  # (h - n) z + n, as torch's GRUCell
            torch.sub(hp, n, out=out[s]).mul_(z).add_(n)
        if zh is not None:
            out[s].lerp_(hp, zh[s])
        hbuf[:bs].copy_(out[s])
    return out, hbuf, (gates, hprev, hprev_m, an, th)


def backward(flags: int, gout: Tensor, ghn: Tensor, saved, w_hh: Tensor, has_bias: bool, mask: Tensor | None,
             batch_sizes: tuple[int, ...], reverse: bool, zh: Tensor | None = None):  # fmt: skip
    """Returns ``d xp, d h0, d W_hh, d b_hh`` (``None`` without bias)."""
    gates, hprev, hprev_m, an, th = saved
    L = Layout(flags)
    H, B = hprev.shape[1], ghn.shape[0]
    hm_all = hprev_m if mask is not None else hprev
    dxp = torch.empty_like(gates)
    dan = torch.empty_like(an)
    dd = gates.new_empty(B, len(L.D) * H)  # d a_D of one step
    t1, t2, t3 = (gates.new_empty(B, H) for _ in range(3))
    dhz = torch.empty_like(ghn)
    dhbuf = ghn.clone()
    lin_d = Linear(L.rows(w_hh, L.D, H).t(), B)  # type: ignore[union-attr]
    lin_z = Linear(L.rows(w_hh, "z", H).t(), B) if L.zsrc == "t" else None  # type: ignore[union-attr]
    lin_n = Linear(L.rows(w_hh, "n", H).t(), B) if not L.reset_after else None  # type: ignore[union-attr]
    for off, bs in reversed(schedule(batch_sizes, reverse)):
        s = slice(off, off + bs)
        g, dx, dh, tmp, direct = gates[s], dxp[s], t1[:bs], t2[:bs], t3[:bs]
        r, z, n = g[:, :H], g[:, H : 2 * H], g[:, 2 * H :]
        dr, dz, dn = dx[:, :H], dx[:, H : 2 * H], dx[:, 2 * H :]
        hp, hm = hprev[s], hm_all[s]
        torch.add(gout[s], dhbuf[:bs], out=dh)
        if zh is not None:  # h_t = lerp(h̃_t, h_{t-1}, zh): split the gradient
            torch.mul(dh, zh[s], out=dhz[:bs])
            dh.sub_(dhz[:bs])
        torch.mul(n, n, out=dn).neg_().add_(1).mul_(dh)  # dh (1 - n²)
        torch.addcmul(z, z, z, value=-1, out=dz).mul_(dh)  # dh z(1-z)
        if L.cand_z:  # u = z
            dn.mul_(z)
            dz.mul_(torch.sub(n, hp, out=tmp))
            torch.addcmul(dh, dh, z, value=-1, out=direct)
        else:  # u = 1 - z
            dn.addcmul_(dn, z, value=-1)
            dz.mul_(torch.sub(hp, n, out=tmp))
            torch.mul(dh, z, out=direct)
        torch.addcmul(r, r, r, value=-1, out=dr)  # r(1-r)
        if L.reset_after:
            dr.mul_(dn).mul_(an[s])
            torch.mul(dn, r, out=dan[s])
        else:
            grh = lin_n(dn)  # type: ignore[misc]
            dr.mul_(grh).mul_(hm)
        da = dd[:bs]
        for j, k in enumerate(L.D):
            da[:, j * H : (j + 1) * H].copy_({"r": dr, "z": dz, "n": dan[s] if L.reset_after else dn}[k])
        dhm = lin_d(da)
        if not L.reset_after:
            dhm.addcmul_(grh, r)
        if lin_z is not None:
            t = th[s]
            dhm.addcmul_(lin_z(dz), torch.mul(t, t, out=tmp).neg_().add_(1))
        if mask is None:
            torch.add(dhm, direct, out=dhbuf[:bs])
        else:
            torch.mul(dhm, mask[:bs], out=dhbuf[:bs]).add_(direct)
        if zh is not None:
            dhbuf[:bs].add_(dhz[:bs])
    # weight gradients: each hidden block against its source, one GEMM over all rows
    src = {"r": hm_all, "z": th if L.zsrc == "t" else hm_all}
    src["n"] = hm_all if L.reset_after else gates[:, :H] * hm_all
    dblk = {"r": dxp[:, :H], "z": dxp[:, H : 2 * H], "n": dan if L.reset_after else dxp[:, 2 * H :]}
    dw_hh = torch.cat([mm_tn(dblk[k], src[k]) for k in L.hid])
    db_hh = torch.cat([dblk[k].sum(0) for k in L.hid]) if has_bias else None
    return dxp, dhbuf, dw_hh, db_hh
