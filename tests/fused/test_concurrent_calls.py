"""Layers called from several Python threads at once (torch releases the GIL inside its ops).

The compiled kernels keep no state between calls (transposed and packed weights, scratch and the
saved buffers are the call's own), and the extension loads once under a lock
(``kernels/ext.py``), so concurrent calls of one layer, and of different layers, must give
what the same calls give one after another: float64, training (forward and all gradients) and
inference, dense and packed, with the kernels' threads on.
"""

from __future__ import annotations

import random
import threading

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit

from .test_fused_kernels import require_ext

CASES = {
    "lstm": (rnnkit.LSTM, {"proj_size": 7}),
    "lstm_peephole": (rnnkit.LSTM, {"peephole": True, "zoneout": 0.2}),  # zoneout: eval only
    "lstm_cifg": (rnnkit.LSTM, {"coupled_gates": True}),
    "lstm_layernorm": (rnnkit.LSTM, {"norm": "layer"}),
    "lstm_batchnorm": (rnnkit.LSTM, {"norm": "batch"}),  # eval only: training updates buffers
    "gru": (rnnkit.GRU, {}),
    "gru_mut2": (rnnkit.GRU, {"variant": "mut2"}),
    "rnn_layernorm": (rnnkit.RNN, {"norm": "layer"}),
}


def run_threads(threads: list[threading.Thread], failures: list[str]) -> None:
    """Start and join ``threads``; fail if one hangs or any reported a failure."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a concurrent call hung"
    assert not failures, failures[:3]


def _call(m: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor | None, grad: bool) -> list:
    """Output, final state and (``grad``) the gradients of the input and every parameter."""
    with torch.set_grad_enabled(grad):
        xi = x.clone().requires_grad_(grad)
        out, state = m(xi if lengths is None else pack_padded_sequence(xi, lengths))
        out = out if lengths is None else out.data
        states = state if isinstance(state, tuple) else (state,)
        res = [out.detach(), *(s.detach() for s in states)]
        if grad:
            loss = (out * out).sum() + sum(s.sum() for s in states)
            res += torch.autograd.grad(loss, [xi, *m.parameters()])
    return res


def test_concurrent_calls_give_the_serial_results(num_threads):
    require_ext()
    num_threads(2)
    torch.manual_seed(0)
    layers = []
    for cls, kw in CASES.values():
        m = cls(9, 24, num_layers=2, bidirectional=True, impl="fused", **kw)
        layers.append(m.train(not ("zoneout" in kw or kw.get("norm") == "batch")))
    lengths = torch.tensor([6] * 10 + [4] * 20 + [1] * 10)  # packed: 40 rows, then 30, then 10
    inputs = [(torch.randn(6, 40, 9), lengths), (torch.randn(5, 3, 9), None)]
    jobs = [(m, x, lengths, grad) for m in layers for x, lengths in inputs for grad in (True, False)]
    serial = [_call(*job) for job in jobs]
    failures: list[str] = []

    def worker(seed: int) -> None:
        order = random.Random(seed).choices(range(len(jobs)), k=len(jobs))
        for i in order:
            try:
                got = _call(*jobs[i])
                for a, b in zip(got, serial[i], strict=True):
                    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
            except Exception as e:  # noqa: BLE001 - reported by the main thread
                failures.append(f"job {i}: {e!r}")

    run_threads([threading.Thread(target=worker, args=(seed,)) for seed in range(4)], failures)
