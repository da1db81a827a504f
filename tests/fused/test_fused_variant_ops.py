"""The fused variant kernels as custom ops: gradcheck, opcheck and ``torch.compile(fullgraph=True)``."""

from __future__ import annotations

import pytest
import torch

import rnnkit
import rnnkit.kernels as K
from rnnkit.kernels import variants

from .test_fused_kernels import require_ext
from .test_fused_variants import BS, _cell, _close, _setup

# -- gradcheck, custom ops -------------------------------------------------------------------------
GRADCHECK = {
    "lstm": {"coupled_gates": True, "peephole": True, "proj_size": 2, "output_activation": False},
    "fgr": {"full_gate_recurrence": True, "peephole": True, "input_gate": False},
    "gru": {"variant": "mut3", "reset_after": False},
}


@pytest.mark.parametrize("use_ext", [False, True])
@pytest.mark.parametrize("family", list(GRADCHECK))
def test_gradcheck(family, use_ext):
    if use_ext:
        require_ext()
    cell = _cell(family, GRADCHECK[family], I=2, H=3)
    p, x, h0, mask, _ = _setup(cell)
    names = list(p)

    def f(x, *rest):
        hs, ps = rest[: len(h0)], dict(zip(names, rest[len(h0) :]))
        xp = K.project_input(cell, ps, x)
        out, st = K.run_direction(
            cell, ps, xp, BS, hs, True, mask, use_ext, zoneout=(0.3, 0.6, 0.5)[: len(h0)]
        )
        return (out, *st)

    assert torch.autograd.gradcheck(f, (x, *h0, *p.values()))


def _op_args(family, kw):
    """Arguments of ``rnnkit::fused_variant_direction`` for a cell, float64, with every input."""
    cell = _cell(family, kw, H=4)
    kind, flags = variants.kind_of(cell)
    p, x, h0, mask, _ = _setup(cell)
    xp = K.project_input(cell, {k: v.detach() for k, v in p.items()}, x.detach()).requires_grad_(True)
    N = xp.shape[0]
    zh, zc = torch.rand(N, h0[0].shape[1]), (torch.rand(N, h0[1].shape[1]) if kind == "lstm_v" else None)
    lstm, fgr = kind == "lstm_v", len(h0) == 3
    return (
        kind, flags, xp, h0[0], h0[1] if lstm else None, p["weight_hh"], None if lstm else p.get("bias_hh"),
        p.get("weight_hr"), mask, zh, zc, p.get("weight_peephole"), h0[2] if fgr else None,
        p.get("weight_gg"), torch.rand(N, h0[2].shape[1]) if fgr else None,
    )  # fmt: skip


OP_CASES = [
    ("lstm", {"coupled_gates": True, "peephole": True, "proj_size": 2}),
    ("lstm", {"input_gate": False, "output_gate": False, "input_activation": False}),
    ("gru", {"reset_after": False}),
    ("gru", {"variant": "mut1"}),
    ("gru", {"variant": "mut3", "reset_after": True}),
    ("fgr", {"full_gate_recurrence": True, "coupled_gates": True, "peephole": True, "proj_size": 2}),
]


@pytest.mark.parametrize("case", range(len(OP_CASES)))
def test_opcheck(case):
    torch.manual_seed(0)
    args = _op_args(*OP_CASES[case])
    torch.library.opcheck(variants.fused_variant_direction, (*args, BS, case % 2 == 0))
    res = variants.fused_variant_direction(*args, BS, False)
    out, hn, cn, gn, saved = res[0].detach(), res[1], res[2], res[3], [s.detach() for s in res[4:]]
    lstm = args[0] == "lstm_v"
    g = (torch.randn_like(out), torch.randn_like(hn), torch.randn_like(cn) if lstm else cn.new_empty(0))
    g += (torch.randn_like(gn),)
    kind, flags, _, _, _, w_hh, b_hh, w_hr, mask, zh, zc, w_peep, _, w_gg, zg = args
    det = [t.detach() if t is not None else None for t in (w_hh, w_hr, w_peep, w_gg)]
    bw = (
        kind,
        flags,
        *g,
        saved,
        det[0],
        b_hh is not None,
        det[1],
        mask,
        zh,
        zc,
        det[2],
        det[3],
        zg,
        BS,
        False,
    )
    torch.library.opcheck(variants.fused_variant_direction_backward, bw)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_matches_eager_loop(monkeypatch):
    """A CIFG-FGR-LSTM + MUT1-GRU model under torch.compile(fullgraph=True) runs the variant op
    (one per direction) and matches the reference loop, forward and gradients."""
    calls = []
    orig = variants.forward_impl
    monkeypatch.setattr(variants, "forward_impl", lambda *a: calls.append(a[0]) or orig(*a))

    class Model(torch.nn.Module):
        def __init__(self, impl):
            super().__init__()
            torch.manual_seed(0)
            self.lstm = rnnkit.LSTM(
                3, 4, bidirectional=True, impl=impl, coupled_gates=True, full_gate_recurrence=True
            )
            self.gru = rnnkit.GRU(8, 3, impl=impl, variant="mut1")

        def forward(self, x):
            y, (h, c, g) = self.lstm(x)
            z, hg = self.gru(y)
            return z.sum(0) + hg.sum() + c.sum() + g.sum()

    compiled, ref = Model("auto"), Model("loop")
    x = torch.randn(5, 2, 3)
    torch._dynamo.reset()
    y = torch.compile(compiled, fullgraph=True)(x)
    assert sorted(calls) == ["gru_v", "lstm_v", "lstm_v"]
    y_ref = ref(x)
    torch.testing.assert_close(y, y_ref, atol=1e-10, rtol=1e-10)
    ga = torch.autograd.grad(y.sum(), list(compiled.parameters()))
    gb = torch.autograd.grad(y_ref.sum(), list(ref.parameters()))
    _close(ga, gb, 1e-10)
