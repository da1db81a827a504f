"""Second-order gradients through the fused standard kernels, by recomputation.

The fused kernels' backward is explicit BPTT (C++, or in-place PyTorch): a first-order
gradient, not a graph autograd can differentiate again. When a gradient is taken with
``create_graph=True`` (gradient penalties, MAML, Hessian-vector products), the autograd node of
a standard direction (:class:`rnnkit.kernels._Direction` that projected its own input; with
recurrent dropout, zoneout and peepholes too) recomputes the direction here with plain
differentiable ops from its saved inputs ``x, W_ih, b, h0, c0, W_hh, b_hh, W_hr, w_peep`` and
masks, and lets autograd differentiate that, as torch.nn's per-op CPU GRU/RNN do anyway. A Python loop over
the steps: slower than the fused backward, and only taken under ``create_graph=True`` and for a
batched backward (``is_grads_batched=True``: vmap batches plain ops, not the C++ kernels).
Elsewhere (the Greff/GRU variants, the normalized cells) differentiating twice raises
:data:`._common.SECOND_ORDER`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# positions of the differentiable inputs of _Direction.forward (after ctx)
_INPUTS = {"h0": 6, "c0": 7, "w_hh": 8, "b_hh": 9, "w_hr": 10, "w_peep": 14, "x": 15, "w_ih": 16, "b_in": 17}
N_INPUTS = 18


def direction(kind: str, bsz: Sequence[int], reverse: bool, xp: Tensor, h0: Tensor, c0: Tensor | None,
              w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None, mask: Tensor | None = None,
              zh: Tensor | None = None, zc: Tensor | None = None, w_peep: Tensor | None = None):  # fmt: skip
    """Differentiable ``out (N, P), h_n, c_n`` (``None`` unless LSTM) of one direction over packed
    ``xp`` (``x W_ihᵀ + b``): the cells' equations in torch's gate order (LSTM i, f, g, o; GRU
    r, z, n with ``r ⊙ (h W_hnᵀ + b_hn)``), rows past a step's batch keeping their state; with
    the options of the fused kernels (:mod:`.lstm`, :mod:`.gru`, :mod:`.rnn`): the recurrent
    dropout ``mask (B, P)`` on the GEMM's ``h_{t-1}``, zoneout weights per row ``zh (N, P)``,
    ``zc (N, H)`` (``s_t = lerp(s̃_t, s_{t-1}, z)``, ``h`` after the projection) and peepholes
    ``w_peep (3H,)`` (``i, f`` see ``c_{t-1}``, ``o`` sees ``c̃_t``)."""
    offs = [0]
    for b in bsz:
        offs.append(offs[-1] + b)
    h, c, outs = h0, c0, [xp] * len(bsz)  # outs: placeholders, one per step, all replaced
    for t in reversed(range(len(bsz))) if reverse else range(len(bsz)):
        bs, rows = bsz[t], slice(offs[t], offs[t] + bsz[t])
        xt, hb = xp[rows], h[:bs]
        r = (hb if mask is None else hb * mask[:bs]) @ w_hh.t()
        if kind == "lstm":
            H, cb = c.shape[1], c[:bs]  # type: ignore[union-attr,index]
            a = xt + r
            ai, af, ao = a[:, :H], a[:, H : 2 * H], a[:, 3 * H :]
            if w_peep is not None:
                ai, af = ai + w_peep[:H] * cb, af + w_peep[H : 2 * H] * cb
            cn = torch.sigmoid(af) * cb + torch.sigmoid(ai) * torch.tanh(a[:, 2 * H : 3 * H])
            if w_peep is not None:
                ao = ao + w_peep[2 * H :] * cn
            hn = torch.sigmoid(ao) * torch.tanh(cn)
            if w_hr is not None:
                hn = hn @ w_hr.t()
            if zc is not None:
                cn = torch.lerp(cn, cb, zc[rows])
            c = torch.cat([cn, c[bs:]])  # type: ignore[index]
        elif kind == "gru":
            H = hb.shape[1]
            r = r if b_hh is None else r + b_hh
            rz = torch.sigmoid(xt[:, : 2 * H] + r[:, : 2 * H])
            n = torch.tanh(xt[:, 2 * H :] + rz[:, :H] * r[:, 2 * H :])
            hn = n + rz[:, H:] * (hb - n)  # (1 - z) n + z h
        else:
            hn = torch.relu(xt + r) if kind == "rnn_relu" else torch.tanh(xt + r)
        if zh is not None:
            hn = torch.lerp(hn, hb, zh[rows])
        h = torch.cat([hn, h[bs:]])
        outs[t] = hn
    return torch.cat(outs), h, c


def backward(ctx, saved: dict[str, Tensor | None], gout: Tensor, ghn: Tensor, gcn: Tensor) -> tuple:
    """The gradients ``_Direction.backward`` returns, as a differentiable graph: the direction
    recomputed from ``saved`` (its inputs by name) and differentiated with ``create_graph``."""
    s: dict = saved
    with torch.enable_grad():
        xp = s["x"] @ s["w_ih"].t() if s["b_in"] is None else torch.addmm(s["b_in"], s["x"], s["w_ih"].t())
        out, hn, cn = direction(
            ctx.kind, ctx.batch_sizes, ctx.reverse, xp, s["h0"], s["c0"], s["w_hh"], s["b_hh"], s["w_hr"],
            s["mask"], s["zh"], s["zc"], s["w_peep"],
        )  # fmt: skip
        names = [n for n, i in _INPUTS.items() if ctx.needs_input_grad[i] and saved[n] is not None]
        outputs, grads = ([out, hn, cn], [gout, ghn, gcn]) if cn is not None else ([out, hn], [gout, ghn])
        inputs = [saved[n] for n in names]
        found = torch.autograd.grad(outputs, inputs, grads, create_graph=True, allow_unused=True)
    res: list[Tensor | None] = [None] * N_INPUTS
    for n, g in zip(names, found):
        res[_INPUTS[n]] = g
    return tuple(res)
