"""The compiled kernels with two threads, at shapes where their work is split between threads.

The other fused tests run at tiny sizes, where every parallel region of the C++ kernels stays
on one thread. Here B and H are big enough that the step GEMM and the element-wise passes are
split (rnnkit/kernels/csrc/blocked.h: more than 2**20 multiply-adds per step), so a race or a
wrong block offset shows up as a mismatch against the generic loop (float64, forward and all
gradients, packed, bidirectional, training with masks drawn under the same seed).
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit

from .test_fused_kernels import require_ext

I, H, B = 24, 96, 40  # one LSTM step: 40 * 96 * 384 = 1.5M multiply-adds
CASES = {
    "lstm": (rnnkit.LSTM, {}),
    "lstm_proj": (rnnkit.LSTM, {"proj_size": 40}),
    "lstm_peephole": (rnnkit.LSTM, {"peephole": True}),
    "lstm_regs": (rnnkit.LSTM, {"recurrent_dropout": 0.3, "zoneout": (0.2, 0.1)}),
    "lstm_peephole_zoneout": (rnnkit.LSTM, {"peephole": True, "zoneout": 0.2}),
    "lstm_cifg": (rnnkit.LSTM, {"coupled_gates": True, "recurrent_dropout": 0.2}),
    "lstm_nfg": (rnnkit.LSTM, {"forget_gate": False}),
    "lstm_fgr": (rnnkit.LSTM, {"full_gate_recurrence": True}),
    "lstm_layernorm": (rnnkit.LSTM, {"norm": "layer", "recurrent_dropout": 0.2}),
    "lstm_batchnorm": (rnnkit.LSTM, {"norm": "batch"}),
    "gru": (rnnkit.GRU, {"recurrent_dropout": 0.2}),
    "gru_zoneout": (rnnkit.GRU, {"zoneout": 0.2}),
    "gru_mut2": (rnnkit.GRU, {"variant": "mut2"}),
    "gru_reset_before": (rnnkit.GRU, {"reset_after": False}),
    "gru_layernorm": (rnnkit.GRU, {"norm": "layer"}),
    "rnn": (rnnkit.RNN, {"zoneout": 0.2}),
    "rnn_layernorm": (rnnkit.RNN, {"norm": "layer"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_two_threads_match_the_loop(name, two_threads):
    require_ext()
    cls, kw = CASES[name]
    torch.manual_seed(0)
    fused = cls(I, H, bidirectional=True, impl="fused", dtype=torch.float64, **kw)
    loop = cls(I, H, bidirectional=True, impl="loop", dtype=torch.float64, **kw)
    for pname, w in fused.named_parameters():
        if "peephole" in pname:  # initialized to zero: make the peepholes matter
            w.data.uniform_(-0.5, 0.5)
    loop.load_state_dict(fused.state_dict())
    lengths = torch.tensor([7] * 20 + [5] * 12 + [2] * 8)  # batch 40, 40, 32, 32, 32, 20, 20
    x = torch.randn(7, B, I, dtype=torch.float64)
    results = []
    for m in (fused, loop):
        torch.manual_seed(1)  # the same masks for both
        xi = x.clone().requires_grad_()
        out, state = m(pack_padded_sequence(xi, lengths))
        states = state if isinstance(state, tuple) else (state,)
        loss = (out.data * torch.linspace(-1, 1, out.data.shape[-1], dtype=x.dtype)).sum()
        loss = loss + sum((s * s).sum() for s in states)
        grads = torch.autograd.grad(loss, [xi, *m.parameters()])
        results.append([out.data, *states, *grads])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "name", ["lstm", "lstm_proj", "lstm_peephole", "lstm_regs", "lstm_cifg", "lstm_nfg", "lstm_fgr"]
)
def test_inference_without_saved_buffers_gives_the_same_outputs(name, threads, monkeypatch, num_threads):
    """Without gradients the LSTM kernel skips the buffers backward reads: same numbers."""
    require_ext()
    from rnnkit.kernels import ops, variants

    seen = []
    real, real_v = ops.forward_impl, variants.forward_impl

    def spy(*args, save=True, **kw):
        seen.append(save)
        return real(*args, save=save, **kw)

    def spy_v(kind, flags, *args, **kw):  # the Greff kernels: a flag bit
        seen.append(not flags & variants.NO_SAVE)
        return real_v(kind, flags, *args, **kw)

    monkeypatch.setattr(ops, "forward_impl", spy)
    monkeypatch.setattr(variants, "forward_impl", spy_v)
    num_threads(threads)
    cls, kw = CASES[name]
    torch.manual_seed(0)
    m = cls(I, H, impl="fused", **kw).eval()  # float32: the AVX-512 row where the CPU has it
    x = torch.randn(9, B, I)
    with torch.no_grad():
        y0, s0 = m(x)
    y1, s1 = m(x.requires_grad_())
    assert seen == [False, True]
    torch.testing.assert_close(y0, y1.detach(), atol=0, rtol=0)
    for a, b in zip(s0, s1):
        torch.testing.assert_close(a, b.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["lstm_regs", "lstm_layernorm", "lstm_batchnorm", "gru_layernorm", "rnn"])
def test_two_threads_repeat_the_same_bits(name, two_threads):
    """docs/fused.md's promise: at a fixed thread count a call is bit-identical from call to call
    (no reduction whose order depends on the threads' timing). float32 at a size that splits the
    step GEMM and engages the normalized cells' thread team (norm_team.h: 8192 values a step)."""
    require_ext()
    cls, kw = CASES[name]
    torch.manual_seed(0)
    m = cls(24, 128, impl="fused", dtype=torch.float32, **kw)
    x = torch.randn(6, 48, 24, dtype=torch.float32)
    results = []
    for _ in range(3):
        torch.manual_seed(1)  # the same masks each call
        xi = x.clone().requires_grad_()
        out, state = m(xi)
        states = state if isinstance(state, tuple) else (state,)
        weights = torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)
        loss = (out * weights).sum() + sum((s * s).sum() for s in states)
        grads = torch.autograd.grad(loss, [xi, *m.parameters()])
        results.append([out, *states, *grads])
    for again in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], again, strict=True))
