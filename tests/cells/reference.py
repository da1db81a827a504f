"""Unfused references written straight from the papers' equations, one gate at a time.

They share nothing with ``rnnkit.cells`` except the parameter layout (read from the layer's
own tensors): explicit per-gate weight slices, hand-written layer/batch norm, a plain Python
loop over a dense time-major batch. Every variant of the zoo is tested against these.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-5


def sig(a: Tensor) -> Tensor:
    return 1 / (1 + torch.exp(-a))


def ln(a: Tensor, gain: Tensor, shift: Tensor | None) -> Tensor:
    """Layer norm over the features: (a - mean) / sqrt(biased var + eps) * gain + shift."""
    mu = a.mean(-1, keepdim=True)
    var = ((a - mu) ** 2).mean(-1, keepdim=True)
    y = (a - mu) / torch.sqrt(var + EPS) * gain
    return y if shift is None else y + shift


class RefBN:
    """Batch norm with statistics per time step (Cooijmans et al. 2016); own copy of stats."""

    def __init__(self, mean: Tensor, var: Tensor, training: bool) -> None:
        self.mean, self.var, self.training = mean.clone(), var.clone(), training

    def __call__(self, a: Tensor, t: int, gain: Tensor, shift: Tensor | None) -> Tensor:
        s = min(t, self.mean.shape[0] - 1)
        if self.training:
            n = a.shape[0]
            mu = a.mean(0)
            var = ((a - mu) ** 2).sum(0) / n
            self.mean[s] = 0.9 * self.mean[s] + 0.1 * mu.detach()
            if n > 1:
                self.var[s] = 0.9 * self.var[s] + 0.1 * var.detach() * n / (n - 1)
        else:
            mu, var = self.mean[s], self.var[s]
        y = (a - mu) / torch.sqrt(var + EPS) * gain
        return y if shift is None else y + shift


def blocks(w: Tensor | None, names: str, H: int) -> dict[str, Tensor]:
    """Split the rows of ``w`` into per-gate blocks of ``H`` rows named by ``names``."""
    if w is None:
        return {}
    return {k: w[j * H : (j + 1) * H] for j, k in enumerate(names)}


# -- LSTM ------------------------------------------------------------------------------
def lstm_gates(o: dict) -> tuple[str, str]:
    """(present gate rows in i,f,g,o order, present sigmoid gates in i,f,o order)."""
    has_i = o.get("input_gate", True) and not o.get("coupled_gates", False)
    has = {"i": has_i, "f": o.get("forget_gate", True), "g": True, "o": o.get("output_gate", True)}
    return "".join(k for k in "ifgo" if has[k]), "".join(k for k in "ifo" if has[k])


def lstm_step(p: dict, o: dict, x: Tensor, state: tuple, t: int, bn: dict | None) -> tuple:
    """One LSTM step with every option of the zoo, from the equations."""
    h, c = state[0], state[1]
    H = c.shape[1]
    gates, sgates = lstm_gates(o)
    W, U = blocks(p["weight_ih"], gates, H), blocks(p["weight_hh"], gates, H)
    bias = {k: 0.0 for k in gates}
    if "bias_ih" in p:
        bi, bh = blocks(p["bias_ih"], gates, H), blocks(p["bias_hh"], gates, H)
        bias = {k: bi[k] + bh[k] for k in gates}
    wx = torch.cat([x @ W[k].T for k in gates], 1)
    uh = torch.cat([h @ U[k].T for k in gates], 1)
    norm = o.get("norm")
    if norm == "layer":
        wx = ln(wx, p["weight_ln_ih"], p["bias_ln_ih"])
        uh = ln(uh, p["weight_ln_hh"], p["bias_ln_hh"])
    elif norm == "batch":
        wx = bn["ih"](wx, t, p["weight_bn_ih"], None)
        uh = bn["hh"](uh, t, p["weight_bn_hh"], None)
    a = {k: v + bias[k] for k, v in zip(gates, (wx + uh).split(H, 1))}
    if o.get("full_gate_recurrence"):
        prev = dict(zip(sgates, state[2].split(H, 1)))
        R = p["weight_gg"]
        for r, k in enumerate(sgates):
            for s, j in enumerate(sgates):
                a[k] = a[k] + prev[j] @ R[r * H : (r + 1) * H, s * H : (s + 1) * H].T
    peep = blocks(p.get("weight_peephole"), sgates, H) if o.get("peephole") else {}
    zero = torch.zeros(H)
    f = sig(a["f"] + peep.get("f", zero) * c) if "f" in a else torch.ones_like(c)
    if "i" in a:
        i = sig(a["i"] + peep.get("i", zero) * c)
    elif o.get("coupled_gates"):
        i = 1 - f
    else:
        i = torch.ones_like(c)
    g = torch.tanh(a["g"]) if o.get("input_activation", True) else a["g"]
    c_new = f * c + i * g
    og = sig(a["o"] + peep.get("o", zero) * c_new) if "o" in a else torch.ones_like(c)
    if norm == "layer":
        cn = ln(c_new, p["weight_ln_c"], p["bias_ln_c"])
    elif norm == "batch":
        cn = bn["c"](c_new, t, p["weight_bn_c"], p["bias_bn_c"])
    else:
        cn = c_new
    h_new = og * (torch.tanh(cn) if o.get("output_activation", True) else cn)
    if "weight_hr" in p:
        h_new = h_new @ p["weight_hr"].T
    if o.get("full_gate_recurrence"):
        acts = {"i": i, "f": f, "o": og}
        return h_new, c_new, torch.cat([acts[k] for k in sgates], 1)
    return h_new, c_new


# -- GRU -------------------------------------------------------------------------------
def gru_step(p: dict, o: dict, x: Tensor, state: tuple, t: int, bn: dict | None) -> tuple:
    """torch-form / Cho-form / layer-normalized GRU step, and MUT1-3 (Jozefowicz 2015)."""
    (h,) = state
    H = h.shape[1]
    variant = o.get("variant")
    if variant is not None:
        return (mut_step(p, variant, o.get("reset_after", False), x, h),)
    W, U = p["weight_ih"], p["weight_hh"]
    bi = p.get("bias_ih", torch.zeros(3 * H))
    bh = p.get("bias_hh", torch.zeros(3 * H))
    gx, gh = x @ W.T, h @ U.T
    if o.get("norm") == "layer":
        gx = ln(gx, p["weight_ln_ih"], p["bias_ln_ih"])
        gh = ln(gh, p["weight_ln_hh"], p["bias_ln_hh"])
    gx, gh = gx + bi, gh + bh
    r = sig(gx[:, :H] + gh[:, :H])
    z = sig(gx[:, H : 2 * H] + gh[:, H : 2 * H])
    if o.get("reset_after", True):
        n = torch.tanh(gx[:, 2 * H :] + r * gh[:, 2 * H :])
    else:  # Cho et al. 2014: n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)
        n = torch.tanh(gx[:, 2 * H :] + (r * h) @ U[2 * H :].T + bh[2 * H :])
    return ((1 - z) * n + z * h,)


def mut_step(p: dict, variant: str, reset_after: bool, x: Tensor, h: Tensor) -> Tensor:
    H = h.shape[1]
    inp = {"mut1": "rz", "mut2": "zn", "mut3": "rzn"}[variant]
    hid = {"mut1": "rn", "mut2": "rzn", "mut3": "rzn"}[variant]
    Wx, Wh = blocks(p["weight_ih"], inp, H), blocks(p["weight_hh"], hid, H)
    z0 = torch.zeros(H)
    b = dict(zip("rzn", p["bias_ih"].split(H))) if "bias_ih" in p else {"r": z0, "z": z0, "n": z0}
    bh = blocks(p.get("bias_hh"), hid, H) or {k: z0 for k in hid}
    xh = x @ p["weight_xproj"].T if "weight_xproj" in p else x  # x_t in a hidden-size sum

    def cand(r):
        if reset_after:
            return r * (h @ Wh["n"].T + bh["n"])
        return (r * h) @ Wh["n"].T + bh["n"]

    if variant == "mut1":
        z = sig(x @ Wx["z"].T + b["z"])
        r = sig(x @ Wx["r"].T + h @ Wh["r"].T + bh["r"] + b["r"])
        n = torch.tanh(cand(r) + torch.tanh(xh) + b["n"])
    elif variant == "mut2":
        z = sig(x @ Wx["z"].T + h @ Wh["z"].T + bh["z"] + b["z"])
        r = sig(xh + h @ Wh["r"].T + bh["r"] + b["r"])
        n = torch.tanh(cand(r) + x @ Wx["n"].T + b["n"])
    else:
        z = sig(x @ Wx["z"].T + torch.tanh(h) @ Wh["z"].T + bh["z"] + b["z"])
        r = sig(x @ Wx["r"].T + h @ Wh["r"].T + bh["r"] + b["r"])
        n = torch.tanh(cand(r) + x @ Wx["n"].T + b["n"])
    return n * z + h * (1 - z)


# -- RNN -------------------------------------------------------------------------------
def rnn_step(p: dict, o: dict, x: Tensor, state: tuple, t: int, bn: dict | None) -> tuple:
    (h,) = state
    act = torch.tanh if o.get("nonlinearity", "tanh") == "tanh" else torch.relu
    wx, uh = x @ p["weight_ih"].T, h @ p["weight_hh"].T
    if o.get("norm") == "layer":
        wx = ln(wx, p["weight_ln_ih"], p["bias_ln_ih"])
        uh = ln(uh, p["weight_ln_hh"], p["bias_ln_hh"])
    b = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else 0.0
    return (act(wx + uh + b),)


STEPS = {"lstm": lstm_step, "gru": gru_step, "rnn": rnn_step}


def run_stack(layer, family: str, o: dict, x: Tensor, state: tuple) -> tuple[Tensor, tuple, list]:
    """Reference forward of a whole (bidirectional, stacked) layer on a dense ``(T, B, I)``.

    The backward direction runs forward over ``x.flip(0)`` (its time index counts its own
    steps). Returns (output, final states stacked like torch's, the BN statistics used).
    """
    step = STEPS[family]
    D = layer.num_directions
    finals: list[list[Tensor]] = [[] for _ in state]
    stats = []
    for k in range(layer.num_layers):
        outs = []
        for d in range(D):
            p = {n: t for n, t in layer.layer_params(k, d).items()}
            bn = None
            if o.get("norm") == "batch":
                bn = {
                    g: RefBN(p[f"running_mean_{g}"], p[f"running_var_{g}"], layer.training)
                    for g in ("ih", "hh", "c")
                }
                stats.append(bn)
            s = tuple(st[k * D + d] for st in state)
            seq = x if d == 0 else x.flip(0)
            ys = []
            for t in range(seq.shape[0]):
                s = step(p, o, seq[t], s, t, bn)
                ys.append(s[0])
            y = torch.stack(ys)
            outs.append(y if d == 0 else y.flip(0))
            for i, f in enumerate(s):
                finals[i].append(f)
        x = torch.cat(outs, -1)
    return x, tuple(torch.stack(f) for f in finals), stats
