"""Hand-written references for the regularized layers: one sequence at a time, step by step.

The step is ``torch.nn.RNNCell`` / ``LSTMCell`` / ``GRUCell`` called through
``torch.func.functional_call`` with the layer's own tensors (so gradients reach the layer's
parameters), except where torch's cell cannot express the variant — LSTM with projections,
and GRU with recurrent dropout (the mask touches ``h_{t-1}`` only inside ``W_hh h``) — which
are written out from the equations. Masks are the ones the layer drew, recorded in the
documented order (:mod:`rnnkit.regularizers`), in the caller's batch order.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.func import functional_call

from rnnkit import regularizers


@pytest.fixture
def recorder(monkeypatch):
    """Records ``(kind, mask)`` for every mask rnnkit draws, in drawing order."""
    log: list[tuple[str, torch.Tensor]] = []
    real = regularizers.sample_mask

    def spy(kind, shape, p, like):
        m = real(kind, shape, p, like)
        log.append((kind, m))
        return m

    monkeypatch.setattr(regularizers, "sample_mask", spy)
    return log


@functools.cache
def _template(family: str, I: int, H: int, bias: bool, nonlinearity: str) -> nn.Module:
    if family == "lstm":
        return nn.LSTMCell(I, H, bias, device="meta")
    if family == "gru":
        return nn.GRUCell(I, H, bias, device="meta")
    return nn.RNNCell(I, H, bias, nonlinearity, device="meta")


def _family(layer) -> str:
    """Torch's family name; "custom" for any other cell (it brings ``reference_step``)."""
    return {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn", "RNNCell": "rnn", "LSTMCell": "lstm"}.get(
        type(layer).__name__, "custom"
    )


def step(layer, family: str, p: dict, x, state, rec):
    """One step of layer-direction params ``p`` on ``x (1, I)``; ``rec`` masks ``h_{t-1}``."""
    if family == "custom":
        return layer.cells[0].reference_step(p, x, state, rec)
    sig, tanh = torch.sigmoid, torch.tanh
    h = state[0]
    hd = h if rec is None else h * rec
    b = "bias_ih" in p
    if family == "lstm" and "weight_hr" in p:
        gates = x @ p["weight_ih"].T + hd @ p["weight_hh"].T
        if b:
            gates = gates + p["bias_ih"] + p["bias_hh"]
        i, f, g, o = gates.chunk(4, 1)
        c = sig(f) * state[1] + sig(i) * tanh(g)
        return ((sig(o) * tanh(c)) @ p["weight_hr"].T, c)
    if family == "gru" and rec is not None:
        H = h.shape[1]
        gi = x @ p["weight_ih"].T + (p["bias_ih"] if b else 0)
        gh = hd @ p["weight_hh"].T + (p["bias_hh"] if b else 0)
        r = sig(gi[:, :H] + gh[:, :H])
        z = sig(gi[:, H : 2 * H] + gh[:, H : 2 * H])
        n = tanh(gi[:, 2 * H :] + r * gh[:, 2 * H :])
        return ((1 - z) * n + z * h,)
    I, H = p["weight_ih"].shape[1], state[-1].shape[1]
    cell = _template(family, I, H, b, getattr(layer, "nonlinearity", "tanh"))
    if family == "lstm":
        return tuple(functional_call(cell, p, (x, (hd, state[1]))))
    return (functional_call(cell, p, (x, hd)),)


def reference(layer, x, h0, log, lengths=None):
    """Expected ``(output (T, B, D*S_0), final state tuple)`` of ``layer`` (time-major ``x``)
    with the recorded masks ``log``; zero output past each sequence's length."""
    family, L, D = _family(layer), layer.num_layers, layer.num_directions
    T, B = x.shape[0], x.shape[1]
    lengths = [T] * B if lengths is None else [int(n) for n in lengths]
    train = layer.training
    queue = list(log)

    def take(kind):
        k, m = queue.pop(0)
        assert k == kind, f"expected a {kind} mask, the layer drew {k}"
        return m

    # Masks per layer-direction, in the documented drawing order.
    masks = []
    for k in range(L):
        per_dir = []
        zp = layer.zoneout_probs[k]
        for d in range(D):
            p = dict(layer.layer_params(k, d))
            if train and layer.weight_drop:
                for n in p:
                    if n.startswith("weight_hh"):
                        p[n] = p[n] * take("weight_drop")
            rec = take("recurrent") if train and layer.recurrent_dropout else None
            zo = [take("zoneout") if train and z else None for z in zp]
            per_dir.append((p, rec, zo))
        locked = take("locked") if train and layer.locked_dropout and k < L - 1 else None
        masks.append((per_dir, locked))
    assert not queue, f"the layer drew {len(queue)} masks more than expected"

    outs, finals = [], [[[None] * B for _ in range(L * D)] for _ in h0]
    for b in range(B):
        n = lengths[b]
        inp = x[:n, b : b + 1]
        for k in range(L):
            per_dir, locked = masks[k]
            dir_outs = []
            for d in range(D):
                p, rec, zo = per_dir[d]
                zp = layer.zoneout_probs[k]
                state = tuple(s[k * D + d, b : b + 1] for s in h0)
                seq = [None] * n
                for t in reversed(range(n)) if d else range(n):
                    new = step(layer, family, p, inp[t], state, None if rec is None else rec[b])
                    mixed = []
                    for i, (s0, s1) in enumerate(zip(state, new)):
                        if zp[i] and train:
                            m = zo[i][t, b]
                            s1 = m * s0 + (1 - m) * s1
                        elif zp[i]:
                            s1 = zp[i] * s0 + (1 - zp[i]) * s1
                        mixed.append(s1)
                    state = tuple(mixed)
                    seq[t] = state[0]
                for i, s in enumerate(state):
                    finals[i][k * D + d][b] = s[0]
                dir_outs.append(torch.cat(seq))
            inp = torch.cat(dir_outs, 1).unsqueeze(1)
            if locked is not None and k < L - 1:
                inp = inp * locked[b]
        out = inp[:, 0]
        outs.append(torch.cat([out, out.new_zeros(T - n, out.shape[1])]))
    final = tuple(torch.stack([torch.stack(per_b) for per_b in f]) for f in finals)
    return torch.stack(outs, 1), final


def grads(outputs, inputs, seed: int = 7):
    """Gradients of a fixed random projection of ``outputs`` w.r.t. ``inputs``."""
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outputs]
    return torch.autograd.grad(outputs, inputs, w, allow_unused=True, materialize_grads=True)
