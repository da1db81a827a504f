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
all rows. FGR (state ``(h, c, gates)``) is not covered: it runs on the reference loop.

Saved tensors: ``gates (N, G)`` (activations), ``c_{t-1} (N, H)``, ``y (N, H)``,
``h_prev ⊙ m (N, P)``, and where they exist ``o ⊙ y (N, H)`` (projection) and ``c_t (N, H)``
(output-gate peephole); never aliases of each other or of the output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells.base import Cell
from ..cells.lstm import LSTMCellMath
from ._common import schedule
from ._gemm import Linear, mm_tn

HAS_I, HAS_F, HAS_O, COUPLED, IN_ACT, OUT_ACT, PEEPHOLE = 1, 2, 4, 8, 16, 32, 64
STANDARD = HAS_I | HAS_F | HAS_O | IN_ACT | OUT_ACT  # torch's LSTM


def flags_of(cell: Cell) -> int | None:
    """The layout bits of an LSTM cell this kernel runs, ``None`` for others (norm, FGR)."""
    if type(cell) is not LSTMCellMath or cell.norm is not None or cell.layout.full_recurrence:
        return None
    lay, f = cell.layout, 0
    for k, bit in (("i", HAS_I), ("f", HAS_F), ("o", HAS_O)):
        f |= bit if k in lay.gates else 0
    f |= COUPLED if lay.coupled else 0
    f |= IN_ACT if cell.input_activation else 0
    f |= OUT_ACT if cell.output_activation else 0
    f |= PEEPHOLE if lay.peephole else 0
    return f


class Layout:
    """Column blocks of the present gates (``idx[k]``: block index) and peephole order."""

    def __init__(self, flags: int) -> None:
        present = [k for k, b in (("i", HAS_I), ("f", HAS_F), ("g", 0), ("o", HAS_O)) if b == 0 or flags & b]
        self.idx = {k: n for n, k in enumerate(present)}
        self.sig = [k for k in "ifo" if k in self.idx]
        self.coupled, self.peep = bool(flags & COUPLED), bool(flags & PEEPHOLE)
        self.in_act, self.out_act = bool(flags & IN_ACT), bool(flags & OUT_ACT)
        self.ngates = len(present)

    def block(self, t: Tensor, k: str, H: int) -> Tensor:
        return t[:, self.idx[k] * H : (self.idx[k] + 1) * H]

    def peepholes(self, w_peep: Tensor | None, H: int) -> dict[str, Tensor]:
        return dict(zip(self.sig, w_peep.split(H))) if self.peep and w_peep is not None else {}


def forward(flags: int, xp: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_hr: Tensor | None,
            mask: Tensor | None, batch_sizes: tuple[int, ...], reverse: bool,
            zh: Tensor | None, zc: Tensor | None, w_peep: Tensor | None):  # fmt: skip
    """Returns ``out (N, P), h_n (B, P), c_n (B, H)`` and the saved tensors (module doc).

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
    for off, bs in schedule(batch_sizes, reverse):
        s = slice(off, off + bs)
        hp, g, cb = hprev[s], gates[s], cbuf[:bs]
        if mask is None:
            hp.copy_(hbuf[:bs])
        else:
            torch.mul(hbuf[:bs], mask[:bs], out=hp)
        a = lin(hp, base=xp[s])
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
    return out, hbuf, cbuf, (gates, cprev, y, hprev, hraw, cnew)


def backward(flags: int, gout: Tensor, ghn: Tensor, gcn: Tensor, saved, w_hh: Tensor,
             w_hr: Tensor | None, mask: Tensor | None, batch_sizes: tuple[int, ...], reverse: bool,
             zh: Tensor | None, zc: Tensor | None, w_peep: Tensor | None):  # fmt: skip
    """Returns ``d xp, d h0, d c0, d W_hh, d W_hr, d w_peep`` (``None`` where absent)."""
    gates, cprev, y, hprev, hraw, cnew = saved
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
        if "o" in L.idx:
            o, do = L.block(g, "o", H), L.block(dg, "o", H)
            torch.addcmul(o, o, o, value=-1, out=a)  # o(1-o)
            torch.mul(dh, yy, out=do).mul_(a)
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
            i = L.block(g, "i", H)
            torch.addcmul(i, i, i, value=-1, out=L.block(dg, "i", H)).mul_(z).mul_(dc)
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
    dw_hh = mm_tn(dgates, hprev)
    dw_hr = mm_tn(dh_all, hraw) if dh_all is not None else None
    dw_peep = None
    if pk:
        parts = [(L.block(dgates, k, H) * (cnew if k == "o" else cprev)).sum(0) for k in L.sig]
        dw_peep = torch.cat(parts)
    return dgates, dhbuf, dcbuf, dw_hh, dw_hr, dw_peep
