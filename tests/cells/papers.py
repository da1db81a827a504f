"""The zoo's equations written from the papers, independently of ``rnnkit.cells`` and of
:mod:`tests.cells.reference`: one direction of one layer, a plain loop over time, every gate
its own product. Only the parameter *layout* (names, gate order) is read from the docs.

* LSTM: Gers & Schmidhuber (2000) peepholes, Greff et al. (2017) ablations in their notation
  (block input ``z = g(·)``, output ``y = o ⊙ h(c)``, FGR ``+ Σ_j R_kj j_{t-1}``), Ba et al.
  (2016) eq. 20-22 layer norm, Cooijmans et al. (2017) batch norm, torch's projection.
* GRU: Cho et al. (2014) with the reset gate before the product, torch's reset-after form,
  Jozefowicz et al. (2015) MUT1-3 (their ``z`` gates the candidate).
* Elman RNN, tanh/ReLU, with layer norm of the two products.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-5


def sigma(a: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-a))


def split(w: Tensor | None, names: str, H: int) -> dict[str, Tensor]:
    return {} if w is None else {k: w[n * H : (n + 1) * H] for n, k in enumerate(names)}


def cols(a: Tensor, names: str, H: int) -> dict[str, Tensor]:
    return {k: a[:, n * H : (n + 1) * H] for n, k in enumerate(names)}


def lnorm(a: Tensor, gain: Tensor, shift: Tensor | None) -> Tensor:
    mu = a.sum(1, keepdim=True) / a.shape[1]
    var = ((a - mu) ** 2).sum(1, keepdim=True) / a.shape[1]
    y = gain * (a - mu) / (var + EPS).sqrt()
    return y if shift is None else y + shift


def bnorm(p: dict, g: str, a: Tensor, t: int, training: bool) -> Tensor:
    """Cooijmans et al.: statistics of time step ``t`` (the last kept ones beyond ``T_max``);
    updates ``p``'s running copies (momentum 0.1, unbiased variance) in training."""
    mean, var = p[f"running_mean_{g}"], p[f"running_var_{g}"]
    s = min(t, mean.shape[0] - 1)
    if training:
        n = a.shape[0]
        mu = a.sum(0) / n
        v = ((a - mu) ** 2).sum(0) / n
        mean[s] = 0.9 * mean[s] + 0.1 * mu.detach()
        var[s] = 0.9 * var[s] + 0.1 * v.detach() * n / (n - 1)
    else:
        mu, v = mean[s], var[s]
    y = p[f"weight_bn_{g}"] * (a - mu) / (v + EPS).sqrt()
    return y + p[f"bias_bn_{g}"] if f"bias_bn_{g}" in p else y


def lstm(p: dict, o: dict, x: Tensor, state: tuple, training: bool = True, trace: list | None = None):
    """``x (T, B, I)``, ``state (h0, c0[, gates0])`` -> ``(y (T, B, P), final state)``; each
    step's gates ``{i, f, g, o}`` (``g`` the block input after its activation) into ``trace``."""
    h, c = state[0], state[1]
    gprev = state[2] if len(state) > 2 else None
    H = c.shape[1]
    cifg = o.get("coupled_gates", False)
    has = {
        "i": o.get("input_gate", True) and not cifg,
        "f": o.get("forget_gate", True),
        "g": True,
        "o": o.get("output_gate", True),
    }
    rows = "".join(k for k in "ifgo" if has[k])
    sg = "".join(k for k in "ifo" if has[k])  # the sigmoid gates, peephole/FGR order
    W, R = split(p["weight_ih"], rows, H), split(p["weight_hh"], rows, H)
    b = {k: 0.0 for k in rows}
    if "bias_ih" in p:
        bi, bh = split(p["bias_ih"], rows, H), split(p["bias_hh"], rows, H)
        b = {k: bi[k] + bh[k] for k in rows}
    peep = split(p.get("weight_peephole"), sg, H)
    g_act = torch.tanh if o.get("input_activation", True) else (lambda v: v)
    h_act = torch.tanh if o.get("output_activation", True) else (lambda v: v)
    norm = o.get("norm")
    ys = []
    for t in range(x.shape[0]):
        wx = torch.cat([x[t] @ W[k].T for k in rows], 1)
        rh = torch.cat([h @ R[k].T for k in rows], 1)
        if norm == "layer":  # Ba eq. 20: LN of each product (whole gate vector), bias after
            wx = lnorm(wx, p["weight_ln_ih"], p["bias_ln_ih"])
            rh = lnorm(rh, p["weight_ln_hh"], p["bias_ln_hh"])
        elif norm == "batch":  # Cooijmans eq. 6: BN of each product, no shift (β_x = β_h = 0)
            wx = bnorm(p, "ih", wx, t, training)
            rh = bnorm(p, "hh", rh, t, training)
        wx, rh = cols(wx, rows, H), cols(rh, rows, H)
        a = {k: wx[k] + rh[k] + b[k] for k in rows}
        if gprev is not None:  # Greff FGR: a_k += Σ_j R_kj j_{t-1} (rows: receiving, cols: sending)
            prev, Rg = cols(gprev, sg, H), p["weight_gg"]
            for n, k in enumerate(sg):
                a[k] = a[k] + sum(
                    prev[j] @ Rg[n * H : (n + 1) * H, m * H : (m + 1) * H].T for m, j in enumerate(sg)
                )
        gate = {}
        for k in "if":
            if has[k]:
                gate[k] = sigma(a[k] + peep[k] * c) if k in peep else sigma(a[k])
        if cifg:
            gate["i"] = 1 - gate["f"]
        zin = g_act(a["g"])
        c = (gate["f"] * c if "f" in gate else c) + (gate["i"] * zin if "i" in gate else zin)
        if has["o"]:  # Gers & Schmidhuber: the output gate peeks at the *new* cell state
            gate["o"] = sigma(a["o"] + peep["o"] * c) if "o" in peep else sigma(a["o"])
        if norm == "layer":
            cn = lnorm(c, p["weight_ln_c"], p["bias_ln_c"])
        elif norm == "batch":
            cn = bnorm(p, "c", c, t, training)
        else:
            cn = c
        h = gate["o"] * h_act(cn) if has["o"] else h_act(cn)
        if "weight_hr" in p:
            h = h @ p["weight_hr"].T
        if gprev is not None:
            gprev = torch.cat([gate[k] for k in sg], 1)
        if trace is not None:
            trace.append({**gate, "g": zin})
        ys.append(h)
    return torch.stack(ys), (h, c) if gprev is None else (h, c, gprev)


def gru(p: dict, o: dict, x: Tensor, state: tuple, training: bool = True, trace: list | None = None):
    """``x (T, B, I)``, ``state (h0,)`` -> ``(y (T, B, H), (h_T,))``; gates ``{r, z, n}`` into ``trace``."""
    (h,) = state
    H = h.shape[1]
    variant = o.get("variant")
    reset_after = o.get("reset_after", variant is None)
    inp = {None: "rzn", "mut1": "rz", "mut2": "zn", "mut3": "rzn"}[variant]
    hid = {None: "rzn", "mut1": "rn", "mut2": "rzn", "mut3": "rzn"}[variant]
    W, U = split(p["weight_ih"], inp, H), split(p["weight_hh"], hid, H)
    zero = torch.zeros(H)
    bi = split(p["bias_ih"], "rzn", H) if "bias_ih" in p else dict.fromkeys("rzn", zero)
    bh = split(p["bias_hh"], hid, H) if "bias_hh" in p else dict.fromkeys(hid, zero)
    ys = []
    for t in range(x.shape[0]):
        xt = x[t]
        xh = xt @ p["weight_xproj"].T if "weight_xproj" in p else xt
        if o.get("norm") == "layer":  # LN of the two 3H products, biases after
            wx = cols(
                lnorm(torch.cat([xt @ W[k].T for k in "rzn"], 1), p["weight_ln_ih"], p["bias_ln_ih"]),
                "rzn",
                H,
            )
            uh = cols(
                lnorm(torch.cat([h @ U[k].T for k in "rzn"], 1), p["weight_ln_hh"], p["bias_ln_hh"]), "rzn", H
            )
        else:
            wx = {k: xt @ W[k].T for k in inp}
            uh = {k: h @ U[k].T for k in hid}
        if variant != "mut2":
            r = sigma(wx["r"] + bi["r"] + uh["r"] + bh["r"])
        else:  # mut2: r = σ(x + W_hr h + b_r)
            r = sigma(xh + bi["r"] + uh["r"] + bh["r"])
        if variant is None or variant == "mut2":
            z = sigma(wx["z"] + bi["z"] + uh["z"] + bh["z"])
        elif variant == "mut1":  # z = σ(W_xz x + b_z)
            z = sigma(wx["z"] + bi["z"])
        else:  # mut3: z = σ(W_xz x + W_hz tanh(h) + b_z)
            z = sigma(wx["z"] + bi["z"] + torch.tanh(h) @ U["z"].T + bh["z"])
        xin = torch.tanh(xh) if variant == "mut1" else wx["n"]
        if reset_after:
            n = torch.tanh(xin + bi["n"] + r * (uh["n"] + bh["n"]))
        else:  # Cho et al. 2014: the reset gate scales h before the product
            n = torch.tanh(xin + bi["n"] + (r * h) @ U["n"].T + bh["n"])
        h = z * h + (1 - z) * n if variant is None else z * n + (1 - z) * h
        if trace is not None:
            trace.append({"r": r, "z": z, "n": n})
        ys.append(h)
    return torch.stack(ys), (h,)


def rnn(p: dict, o: dict, x: Tensor, state: tuple, training: bool = True, trace: list | None = None):
    (h,) = state
    act = torch.relu if o.get("nonlinearity") == "relu" else torch.tanh
    ys = []
    for t in range(x.shape[0]):
        wx, uh = x[t] @ p["weight_ih"].T, h @ p["weight_hh"].T
        if o.get("norm") == "layer":
            wx = lnorm(wx, p["weight_ln_ih"], p["bias_ln_ih"])
            uh = lnorm(uh, p["weight_ln_hh"], p["bias_ln_hh"])
        b = p["bias_ih"] + p["bias_hh"] if "bias_ih" in p else 0.0
        h = act(wx + uh + b)
        ys.append(h)
    return torch.stack(ys), (h,)


FAMILIES = {"lstm": lstm, "gru": gru, "rnn": rnn}


def direction_params(layer: torch.nn.Module, k: int, d: int, buffers: dict) -> dict:
    """Layer ``k`` direction ``d``'s tensors by base name; buffers from ``buffers`` (copies)."""
    suffix = f"_l{k}" + ("_reverse" if d else "")
    out = {}
    for name, t in [*layer.named_parameters(), *buffers.items()]:
        if name.endswith(suffix):
            out[name[: -len(suffix)]] = t
    return out


def stack(layer, family: str, o: dict, x: Tensor, state: tuple, training: bool, buffers: dict):
    """Multi-layer, bidirectional: the backward direction is the forward math on ``x`` reversed
    in time; layer ``k + 1`` reads the concatenated outputs of layer ``k``."""
    L, D = layer.num_layers, 2 if layer.bidirectional else 1
    finals: list[list[Tensor]] = [[] for _ in state]
    for k in range(L):
        outs = []
        for d in range(D):
            p = direction_params(layer, k, d, buffers)
            s0 = tuple(s[k * D + d] for s in state)
            y, s = FAMILIES[family](p, o, x.flip(0) if d else x, s0, training)
            outs.append(y.flip(0) if d else y)
            for f, v in zip(finals, s):
                f.append(v)
        x = torch.cat(outs, 2)
    return x, tuple(torch.stack(f) for f in finals)
