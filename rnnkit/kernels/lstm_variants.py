"""Fused LSTM direction for the gate layouts of Greff et al. (2017), in pure PyTorch.

One kernel covers every combination of the ablations of "LSTM: A Search Space Odyssey"
(see :mod:`rnnkit.cells.greff`) with peepholes, ``forget_bias`` (an initialization only) and
``proj_size``: NIG (no ``i``), NFG (no ``f``), NOG (no ``o``), NIAF (``g(x) = x``), NOAF
(``h(x) = x``) and CIFG (``i = 1 - f``). The layout travels as bit ``flags``
(:func:`flags_of`); the pre-activation ``a (N, G)`` holds only the present gates, in the order
``i, f, g, o``, ``G = H · #gates``. ``xp`` already holds ``W_ih x_t + b_ih + b_hh``.

Forward per step (``m`` the optional recurrent-dropout mask, ``p_k`` the peepholes)::

    a = xp_t + (h_{t-1} ⊙ m) W_hhᵀ                                     (one GEMM)
    f = σ(a_f + p_f ⊙ c_{t-1}) or 1;   i = σ(a_i + p_i ⊙ c_{t-1}), 1 - f (CIFG) or 1
    z = tanh(a_g) or a_g;              c_t = f ⊙ c_{t-1} + i ⊙ z
    o = σ(a_o + p_o ⊙ c_t) or 1;       y = tanh(c_t) or c_t;   h_t = o ⊙ y  (then W_hr)

Backward per step (``dh`` after the projection and the zoneout split)::

    da_o = dh ⊙ y ⊙ o(1-o);            dc += dh ⊙ o ⊙ (1 - y²) [or dh ⊙ o] + da_o ⊙ p_o
    da_g = dc ⊙ i ⊙ (1 - z²) [or dc ⊙ i]
    da_i = dc ⊙ z ⊙ i(1-i);            da_f = dc ⊙ (c_{t-1} - z [CIFG]) ⊙ f(1-f)
    dc_{t-1} = dc ⊙ f + da_i ⊙ p_i + da_f ⊙ p_f;   dh_{t-1} = (da W_hh) ⊙ m

and after the loop ``dW_hh = daᵀ (h_prev ⊙ m)``, ``dW_hr = dhᵀ (o ⊙ y)``,
``dp_k = Σ da_k ⊙ c`` (``c_{t-1}`` for ``i, f``; ``c_t`` for ``o``), each one reduction over
all rows. FGR (state ``(h, c, gates)``, Hochreiter & Schmidhuber 1997) adds
``a_{t-1} W_ggᵀ`` to the sigmoid gates (``a`` their previous activations, see :func:`forward`).

Saved tensors: ``gates (N, G)`` (activations), ``c_{t-1} (N, H)``, ``y (N, H)``,
``h_prev ⊙ m (N, P)``, and where they exist ``o ⊙ y (N, H)`` (projection) and ``c_t (N, H)``
(output-gate peephole), ``a_{t-1} (N, S)`` (FGR); never aliases of each other or of the output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells.base import Cell
from ..cells.lstm import LSTMCellMath
from ._common import load_prev, schedule
from ._gemm import Linear, mm_tn

HAS_I, HAS_F, HAS_O, COUPLED, IN_ACT, OUT_ACT, PEEPHOLE, FGR = 1, 2, 4, 8, 16, 32, 64, 128
STANDARD = HAS_I | HAS_F | HAS_O | IN_ACT | OUT_ACT  # torch's LSTM


def flags_of(cell: Cell) -> int | None:
    """The layout bits of an LSTM cell this kernel runs, ``None`` for others (normalized)."""
    if type(cell) is not LSTMCellMath or cell.norm is not None:
        return None
    lay, f = cell.layout, 0
    for k, bit in (("i", HAS_I), ("f", HAS_F), ("o", HAS_O)):
        f |= bit if k in lay.gates else 0
    f |= COUPLED if lay.coupled else 0
    f |= IN_ACT if cell.input_activation else 0
    f |= OUT_ACT if cell.output_activation else 0
    f |= PEEPHOLE if lay.peephole else 0
    f |= FGR if lay.full_recurrence else 0
    return f


class Layout:
    """Column blocks of the present gates (``idx[k]``: block index) and peephole order."""

    def __init__(self, flags: int) -> None:
        present = [k for k, b in (("i", HAS_I), ("f", HAS_F), ("g", 0), ("o", HAS_O)) if b == 0 or flags & b]
        self.idx = {k: n for n, k in enumerate(present)}
        self.sig = [k for k in "ifo" if k in self.idx]
        self.coupled, self.peep, self.fgr = bool(flags & COUPLED), bool(flags & PEEPHOLE), bool(flags & FGR)
        self.in_act, self.out_act = bool(flags & IN_ACT), bool(flags & OUT_ACT)
        self.ngates = len(present)

    def block(self, t: Tensor, k: str, H: int) -> Tensor:
        return t[:, self.idx[k] * H : (self.idx[k] + 1) * H]

    def sig_cols(self, t: Tensor, H: int) -> list[Tensor]:
        """The sigmoid gates' blocks of ``t``, in FGR's state order ``i, f, o``."""
        return [self.block(t, k, H) for k in self.sig]

    def peepholes(self, w_peep: Tensor | None, H: int) -> dict[str, Tensor]:
        return dict(zip(self.sig, w_peep.split(H))) if self.peep and w_peep is not None else {}


def forward(flags: int, xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor | None,
            mask: Tensor | None, batch_sizes: tuple[int, ...], reverse: bool,
            zh: Tensor | None, zc: Tensor | None, w_peep: Tensor | None,
            a0: Tensor | None = None, w_gg: Tensor | None = None, zg: Tensor | None = None):  # fmt: skip
    """Returns ``out (N, P), h_n (B, P), c_n (B, H)``, FGR's ``gates_n (B, S)`` (else empty)
    and the saved tensors (module doc).

    FGR (``a0 (B, S)`` the previous sigmoid-gate activations, ``w_gg (S, S)``, ``zg (N, S)``
    its zoneout weights): ``a_k += (a_{t-1} W_ggᵀ)_k`` for the sigmoid gates before their
    peepholes; the new gate state is ``lerp([i, f, o]_t, a_{t-1}, zg)``.

    ``zh (N, P)``, ``zc (N, H)``: optional zoneout weights per row (Krueger et al. 2017):
    ``h_t = lerp(h̃_t, h_{t-1}, zh_t)``, ``c_t = lerp(c̃_t, c_{t-1}, zc_t)``.
    """
    L = Layout(flags)
    N, H, P = xp.shape[0], c0.shape[1], h0.shape[1]
    new = xp.new_empty
    gates, cprev, y, hprev, out = new(N, L.ngates * H), new(N, H), new(N, H), new(N, P), new(N, P)
    hraw = new(N, H) if w_hr is not None else new(0)
    pk = L.peepholes(w_peep, H)
    cnew = new(N, H) if "o" in pk else new(0)  # c_t, for p_o's gradient
    hbuf, cbuf, tmp = h0.clone(), c0.clone(), new(h0.shape[0], H)
    lin = Linear(w_hh, h0.shape[0])
    lin_r = Linear(w_hr, h0.shape[0]) if w_hr is not None else None
    if L.fgr:
        abuf, aprev, lin_g = a0.clone(), new(N, a0.shape[1]), Linear(w_gg, h0.shape[0])  # type: ignore[union-attr]
    else:
        abuf, aprev = new(0), new(0)
    for off, bs in schedule(batch_sizes, reverse):
        s = slice(off, off + bs)
        hp, g, cb = hprev[s], gates[s], cbuf[:bs]
        load_prev(hbuf, mask, bs, hp)
        a = lin(hp, base=xp[s])
        if L.fgr:
            aprev[s].copy_(abuf[:bs])
            for ak, rk in zip(L.sig_cols(a, H), lin_g(aprev[s]).split(H, 1)):
                ak.add_(rk)
        for k in ("i", "f"):
            if k in L.idx:
                ak = L.block(a, k, H)
                if k in pk:
                    ak.addcmul_(pk[k], cb)
                torch.sigmoid(ak, out=L.block(g, k, H))
        z = L.block(g, "g", H)
        if L.in_act:
            torch.tanh(L.block(a, "g", H), out=z)
        else:
            z.copy_(L.block(a, "g", H))
        if "o" in L.idx and "o" not in pk:
            torch.sigmoid(L.block(a, "o", H), out=L.block(g, "o", H))
        cprev[s].copy_(cb)
        if "f" in L.idx:
            cb.mul_(L.block(g, "f", H))
        if "i" in L.idx:
            cb.addcmul_(L.block(g, "i", H), z)
        elif L.coupled:  # i = 1 - f
            cb.addcmul_(torch.neg(L.block(g, "f", H), out=tmp[:bs]).add_(1), z)
        else:
            cb.add_(z)
        if "o" in pk:
            cnew[s].copy_(cb)
            torch.sigmoid(L.block(a, "o", H).addcmul_(pk["o"], cb), out=L.block(g, "o", H))
        if L.out_act:
            torch.tanh(cb, out=y[s])
        else:
            y[s].copy_(cb)
        hr = hraw[s] if lin_r is not None else out[s]
        if "o" in L.idx:
            torch.mul(L.block(g, "o", H), y[s], out=hr)
        else:
            hr.copy_(y[s])
        if lin_r is not None:
            out[s].copy_(lin_r(hr))
        if zc is not None:
            cb.lerp_(cprev[s], zc[s])
        if zh is not None:
            out[s].lerp_(hbuf[:bs], zh[s])
        hbuf[:bs].copy_(out[s])
        if L.fgr:
            torch.cat(L.sig_cols(g, H), 1, out=abuf[:bs])
            if zg is not None:
                abuf[:bs].lerp_(aprev[s], zg[s])
    return out, hbuf, cbuf, abuf, (gates, cprev, y, hprev, hraw, cnew, aprev)


def backward(flags: int, gout: Tensor, ghn: Tensor, gcn: Tensor, gan: Tensor | None, saved, w_hh: Tensor,
             w_hr: Tensor | None, mask: Tensor | None, batch_sizes: tuple[int, ...], reverse: bool,
             zh: Tensor | None, zc: Tensor | None, w_peep: Tensor | None,
             w_gg: Tensor | None = None, zg: Tensor | None = None):  # fmt: skip
    """Returns ``d xp, d h0, d c0, d a0, d W_hh, d W_hr, d w_peep, d W_gg`` (``None`` where
    absent); ``gan`` is the gradient of FGR's final gate state."""
    gates, cprev, y, hprev, hraw, cnew, aprev = saved
    L = Layout(flags)
    H, B = y.shape[1], ghn.shape[0]
    pk = L.peepholes(w_peep, H)
    dgates = torch.empty_like(gates)
    dh_all = torch.empty_like(hprev) if w_hr is not None else None
    dhbuf, dcbuf = ghn.clone(), gcn.clone()
    t1, t2, t3 = (gates.new_empty(B, H) for _ in range(3))
    dhz, dcz = torch.empty_like(ghn), torch.empty_like(gcn)  # zoneout's direct paths to t-1
    lin_t = Linear(w_hh.t(), B)
    lin_rt = Linear(w_hr.t(), B) if w_hr is not None else None
    dsig = dabuf = dacts = daz = None
    if L.fgr:  # d a_{t}: running gradient of the gate state; dsig: stacked for dW_gg
        dsig, dabuf, lin_gt = torch.empty_like(aprev), gan.clone(), Linear(w_gg.t(), B)  # type: ignore[union-attr]
        dacts, daz = torch.empty_like(dabuf), torch.empty_like(dabuf)
    for off, bs in reversed(schedule(batch_sizes, reverse)):
        s = slice(off, off + bs)
        g, dg, yy, dc, a, b, iv = gates[s], dgates[s], y[s], dcbuf[:bs], t1[:bs], t2[:bs], t3[:bs]
        dhp = b if dh_all is None else dh_all[s]
        torch.add(gout[s], dhbuf[:bs], out=dhp)
        if zh is not None:  # h_t = lerp(h̃_t, h_{t-1}, zh): split the gradient
            torch.mul(dhp, zh[s], out=dhz[:bs])
            dhp.sub_(dhz[:bs])
        if zc is not None:
            torch.mul(dc, zc[s], out=dcz[:bs])
            dc.sub_(dcz[:bs])
        dh = dhp if lin_rt is None else lin_rt(dhp)
        da = None  # FGR: dL/d[i, f, o]_t through the gate state
        if dabuf is not None:
            da = dacts[:bs]  # type: ignore[index]
            da.copy_(dabuf[:bs])
            if zg is not None:  # a_t = lerp([i, f, o]_t, a_{t-1}, zg)
                torch.mul(da, zg[s], out=daz[:bs])  # type: ignore[index]
                da.sub_(daz[:bs])  # type: ignore[index]
        dsg = dict(zip(L.sig, da.split(H, 1))) if da is not None else {}
        if "o" in L.idx:
            o, do = L.block(g, "o", H), L.block(dg, "o", H)
            torch.addcmul(o, o, o, value=-1, out=a)  # o(1-o)
            torch.mul(dh, yy, out=do)
            if "o" in dsg:
                do.add_(dsg["o"])
            do.mul_(a)
            dy = torch.mul(dh, o, out=a)
        else:
            dy = dh
        if L.out_act:
            dc.add_(torch.mul(yy, yy, out=iv).neg_().add_(1).mul_(dy))  # dy (1 - tanh²c)
        else:
            dc.add_(dy)
        if "o" in pk:  # o's pre-activation saw c_t
            dc.addcmul_(L.block(dg, "o", H), pk["o"])
        z, dz = L.block(g, "g", H), L.block(dg, "g", H)
        f = L.block(g, "f", H) if "f" in L.idx else None
        if "i" in L.idx:
            i, di = L.block(g, "i", H), L.block(dg, "i", H)
            torch.mul(dc, z, out=di)
            if "i" in dsg:
                di.add_(dsg["i"])
            di.mul_(torch.addcmul(i, i, i, value=-1, out=a))
        elif L.coupled:
            i = torch.neg(f, out=iv).add_(1)  # type: ignore[arg-type]
        else:
            i = None
        if i is not None:  # dL/dz
            torch.mul(dc, i, out=dz)
        else:
            dz.copy_(dc)
        if f is not None:
            df = L.block(dg, "f", H)
            torch.mul(dc, cprev[s], out=df)
            if L.coupled:  # i = 1 - f also depends on f
                df.addcmul_(dc, z, value=-1)
            if "f" in dsg:
                df.add_(dsg["f"])
            df.mul_(torch.addcmul(f, f, f, value=-1, out=a))
        if L.in_act:
            dz.mul_(torch.mul(z, z, out=a).neg_().add_(1))
        if f is not None:
            dc.mul_(f)
        for k in ("i", "f"):  # i's and f's pre-activations saw c_{t-1}
            if k in pk:
                dc.addcmul_(L.block(dg, k, H), pk[k])
        if zc is not None:
            dc.add_(dcz[:bs])
        if mask is None:
            dhbuf[:bs].copy_(lin_t(dg))
        else:
            torch.mul(lin_t(dg), mask[:bs], out=dhbuf[:bs])
        if zh is not None:
            dhbuf[:bs].add_(dhz[:bs])
        if dabuf is not None:  # a_{t-1} fed the sigmoid gates through W_gg (and zoneout)
            torch.cat(L.sig_cols(dg, H), 1, out=dsig[s])  # type: ignore[index]
            dabuf[:bs].copy_(lin_gt(dsig[s]))  # type: ignore[index]
            if zg is not None:
                dabuf[:bs].add_(daz[:bs])  # type: ignore[index]
    dw_hh = mm_tn(dgates, hprev)
    dw_hr = mm_tn(dh_all, hraw) if dh_all is not None else None
    dw_peep = None
    if pk:
        parts = [(L.block(dgates, k, H) * (cnew if k == "o" else cprev)).sum(0) for k in L.sig]
        dw_peep = torch.cat(parts)
    dw_gg = mm_tn(dsig, aprev) if dsig is not None else None
    return dgates, dhbuf, dcbuf, dabuf, dw_hh, dw_hr, dw_peep, dw_gg
