"""Fused kernels of the LSTM gate layouts (Greff et al.) and GRU variants vs the reference loop.

The reference is :mod:`rnnkit.loop` running the cells' own step (written from the papers'
equations and tested against them in ``tests/cells``). Float64, forward, final state and all
gradients (input, initial state, every parameter):

* kernel level, every layout: each ablation alone and every valid combination with
  peepholes and ``proj_size``, FGR (state ``(h, c, gates)``) alone and combined; every GRU
  variant with both reset placements, with and without bias; packed batch sizes, both
  directions, recurrent-dropout mask and zoneout; both backends (C++ extension, pure
  PyTorch), the two also against each other;
* layer level: ``impl="fused"`` vs ``impl="loop"`` under the same seed, 2 layers,
  bidirectional, padded and packed (unsorted), training with recurrent dropout and zoneout;
* dispatch and the ``RNNKIT_NO_EXT=1`` fallback (gradcheck, ``torch.library.opcheck`` on both
  custom ops and ``torch.compile(fullgraph=True)``: ``test_fused_variant_ops.py``).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
import rnnkit.kernels as K
from rnnkit import dispatch
from rnnkit.cells import GRUCellMath, LSTMCellMath, StepContext
from rnnkit.kernels import ext, variants
from rnnkit.loop import run_direction as loop_direction

from .test_fused_kernels import require_ext

BS = [4, 4, 3, 1, 1]  # packed: lengths 5, 3, 3, 1
ABLATIONS = {
    "nig": {"input_gate": False},
    "nfg": {"forget_gate": False},
    "fgr": {"full_gate_recurrence": True},
    "nog": {"output_gate": False},
    "niaf": {"input_activation": False},
    "noaf": {"output_activation": False},
    "cifg": {"coupled_gates": True},
}


def _lstm_layouts():
    """Every ablation alone, and every combination of the gate flags with peephole/projection."""
    out = {}
    for name, kw in ABLATIONS.items():
        for peep, proj in itertools.product([False, True], [0, 2]):
            out[f"{name}{'+peep' if peep else ''}{'+proj' if proj else ''}"] = {
                **kw,
                "peephole": peep,
                "proj_size": proj,
            }
    for bits in itertools.product([True, False], repeat=6):  # combinations (no peephole/proj)
        kw = dict(
            zip(
                [
                    "input_gate",
                    "forget_gate",
                    "output_gate",
                    "input_activation",
                    "output_activation",
                    "coupled_gates",
                ],
                bits,
            )
        )
        if kw["coupled_gates"] and not (kw["input_gate"] and kw["forget_gate"]):
            continue
        out["combo-" + "".join("1" if b else "0" for b in bits)] = kw
    out["nig+nog+noaf+peep+proj"] = {"input_gate": False, "output_gate": False, "output_activation": False,
                                     "peephole": True, "proj_size": 2}  # fmt: skip
    out["cifg+niaf+peep+proj+nobias"] = {"coupled_gates": True, "input_activation": False, "peephole": True,
                                         "proj_size": 2, "bias": False}  # fmt: skip
    return out


LSTM_LAYOUTS = _lstm_layouts()
GRU_VARIANTS = {
    f"{v or 'cho'}{'-ra' if ra else ''}{'' if bias else '-nobias'}": {
        "variant": v,
        "reset_after": ra,
        "bias": bias,
    }
    for v, ra, bias in itertools.product([None, "mut1", "mut2", "mut3"], [False, True], [True, False])
    if (v, ra) != (None, True)  # torch's GRU: the standard kernel
}


def _cell(family, kw, I=3, H=4):
    kw = dict(kw)
    bias = kw.pop("bias", True)
    if family in ("lstm", "fgr"):
        return LSTMCellMath(I, H, bias, kw.pop("proj_size", 0), **kw)
    return GRUCellMath(I, H, bias, **kw)


def _setup(cell, dtype=torch.float64):
    torch.manual_seed(0)
    I = cell.input_size
    p = {s.name: torch.empty(s.shape, dtype=dtype, requires_grad=True) for s in cell.param_specs()}
    cell.reset_parameters(p)
    if "weight_peephole" in p:  # initialized to zero: make the peepholes matter
        p["weight_peephole"].data.uniform_(-0.5, 0.5)
    x = torch.randn(sum(BS), I, dtype=dtype, requires_grad=True)
    h0 = tuple(torch.randn(BS[0], s, dtype=dtype, requires_grad=True) for s in cell.state_sizes())
    mask = torch.bernoulli(torch.full((BS[0], cell.state_sizes()[0]), 0.7, dtype=dtype)) / 0.7
    zmasks = [torch.bernoulli(torch.full((len(BS), BS[0], s), 0.4, dtype=dtype)) for s in cell.state_sizes()]
    return p, x, h0, mask, zmasks


def _results(cell, fn, reverse, regs):
    p, x, h0, mask, zmasks = _setup(cell)
    kw = {"zoneout": (0.3, 0.2, 0.4)[: len(h0)], "zoneout_masks": zmasks} if regs else {}
    out, state = fn(cell, p, x, h0, reverse, mask if regs else None, kw)
    res = [out, *state]
    torch.manual_seed(1)
    loss = sum((r * torch.randn_like(r)).sum() for r in res)
    return res + list(torch.autograd.grad(loss, [x, *h0, *p.values()]))


def _loop(cell, p, x, h0, reverse, mask, kw):
    return loop_direction(
        cell, p, cell.project_input(p, x), BS, h0, reverse, StepContext(recurrent_mask=mask), **kw
    )


def _fused(use_ext):
    def run(cell, p, x, h0, reverse, mask, kw):
        return K.run_direction(cell, p, K.project_input(cell, p, x), BS, h0, reverse, mask, use_ext, **kw)

    return run


def _close(a, b, tol):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)


def _check_kernels(cell):
    assert K.kind_of(cell) in ("lstm_v", "gru_v", "lstm")
    has_ext = not ext.disabled() and ext.ops() is not None
    for reverse, regs in [(False, True), (True, True), (True, False)]:
        ref = _results(cell, _loop, reverse, regs)
        pure = _results(cell, _fused(False), reverse, regs)
        _close(ref, pure, 1e-12)
        if has_ext:
            _close(pure, _results(cell, _fused(True), reverse, regs), 1e-13)


@pytest.mark.parametrize("name", list(LSTM_LAYOUTS))
def test_lstm_layout_kernels_match_loop(name):
    _check_kernels(_cell("lstm", LSTM_LAYOUTS[name]))


@pytest.mark.parametrize("name", list(GRU_VARIANTS))
def test_gru_variant_kernels_match_loop(name):
    _check_kernels(_cell("gru", GRU_VARIANTS[name]))
    _check_kernels(_cell("gru", GRU_VARIANTS[name], I=4))  # MUT1/2: x_t itself, no projection


def test_extension_is_exercised():
    require_ext()  # where it can be built, it must be (and _check_kernels compared it)
    assert hasattr(ext.ops(), "variant_forward")


# -- layers: fused vs loop under the same seed ----------------------------------------------------
LAYERS = {
    **{n: (rnnkit.LSTM, kw) for n, kw in ABLATIONS.items()},
    "cifg+peep+forget_bias": (rnnkit.LSTM, {"coupled_gates": True, "peephole": True, "forget_bias": 1.0}),
    "nog+noaf+proj": (rnnkit.LSTM, {"output_gate": False, "output_activation": False, "proj_size": 2}),
    "nfg+niaf+peep": (rnnkit.LSTM, {"forget_gate": False, "input_activation": False, "peephole": True}),
    "fgr+cifg+peep+proj": (
        rnnkit.LSTM,
        {"full_gate_recurrence": True, "coupled_gates": True, "peephole": True, "proj_size": 2},
    ),  # fmt: skip
    "gru_cho": (rnnkit.GRU, {"reset_after": False}),
    **{m: (rnnkit.GRU, {"variant": m}) for m in ("mut1", "mut2", "mut3")},
    "mut3-ra": (rnnkit.GRU, {"variant": "mut3", "reset_after": True}),
}


@pytest.fixture(params=["ext", "pure"])
def backend(request, monkeypatch):
    if request.param == "ext":
        require_ext()
    else:
        monkeypatch.setattr(K, "backend", lambda x: "pure")
        monkeypatch.setattr(variants, "use_ext_for", lambda x: False)
    return request.param


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_fused_equals_loop(backend, name, packed):
    cls, kw = LAYERS[name]
    regs = {"recurrent_dropout": 0.3, "zoneout": 0.25}
    torch.manual_seed(0)
    a = cls(3, 4, 2, bidirectional=True, impl="fused", **kw, **regs)
    b = cls(3, 4, 2, bidirectional=True, impl="loop", **kw, **regs)
    for n, w in a.named_parameters():
        if "peephole" in n:
            w.data.uniform_(-0.5, 0.5)
    b.load_state_dict(a.state_dict())
    data = torch.randn(5, 3, 3)
    if packed:
        x = pack_padded_sequence(data, torch.tensor([2, 5, 3]), enforce_sorted=False)
        x.data.requires_grad_(True)
        leaf = x.data
    else:
        x = leaf = data.requires_grad_(True)
    res = []
    for m in (a, b):
        torch.manual_seed(7)
        out, st = m(x)
        res.append([out.data if packed else out, *(st if isinstance(st, tuple) else (st,))])
    _close(res[0], res[1], 1e-12)
    ws = [torch.randn_like(t) for t in res[0]]
    ga = torch.autograd.grad(res[0], [leaf, *a.parameters()], ws)
    gb = torch.autograd.grad(res[1], [leaf, *b.parameters()], ws)
    _close(ga, gb, 1e-12)
    a.eval(), b.eval()  # evaluation: zoneout's expectation, no dropout
    _close([a(x)[0].data if packed else a(x)[0]], [b(x)[0].data if packed else b(x)[0]], 1e-12)


# -- dispatch and fallback ---------------------------------------------------------------------------
def test_dispatch(monkeypatch):
    x = torch.randn(3, 2, 3)
    monkeypatch.setattr(K, "backend", lambda x: "ext")  # as if compiled (selection only)
    for cls, kw in LAYERS.values():
        assert dispatch.select(cls(3, 4, **kw), x) == "fused"
    rnn = rnnkit.RNN(3, 4)
    assert variants.kind_of(rnn.cells[0]) is None
    with pytest.raises(ValueError, match="no fused variant kernel"):
        variants.run_direction(rnn.cells[0], {}, x[0], [2], (x[0],))
    monkeypatch.setattr(K, "backend", lambda x: "pure")
    assert dispatch.select(rnnkit.GRU(3, 4, variant="mut2"), x) == "loop"  # pure: not faster


def test_no_ext_env_selects_pure_in_subprocess():
    """``RNNKIT_NO_EXT=1``: the variant kernels run pure and match the reference loop."""
    code = (
        "import torch, rnnkit, rnnkit.kernels as K\n"
        "from rnnkit.kernels import ext, variants\n"
        "torch.set_default_dtype(torch.float64)\n"
        "assert ext.ops() is None and not variants.use_ext_for(torch.zeros(1))\n"
        "ext._build = lambda: 1 / 0\n"
        "for cls, kw in [(rnnkit.LSTM, {'coupled_gates': True}), (rnnkit.GRU, {'variant': 'mut2'})]:\n"
        "    torch.manual_seed(0); a = cls(3, 4, 2, impl='fused', **kw)\n"
        "    b = cls(3, 4, 2, impl='loop', **kw); b.load_state_dict(a.state_dict())\n"
        "    x = torch.randn(5, 2, 3)\n"
        "    torch.testing.assert_close(a(x)[0], b(x)[0], atol=1e-12, rtol=1e-12)\n"
        "print('OK')\n"
    )
    env = dict(os.environ, RNNKIT_NO_EXT="1", PYTHONPATH=os.getcwd())
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr


@pytest.mark.parametrize("H", [5, 128])
@pytest.mark.parametrize(
    "family,kw",
    [
        ("lstm", {"coupled_gates": True, "peephole": True}),
        ("gru", {"variant": "mut3"}),
        ("gru", {"variant": "mut1"}),  # no recurrent term in z: an empty block of W_hh
        ("gru", {"variant": "mut2"}),
        ("gru", {"reset_after": False}),
    ],
)
def test_float32_onednn_sizes_match_loop(family, kw, H):
    """float32 at a size where the step GEMMs take oneDNN (B·rows·in ≥ 2²⁰) where available,
    and at a small one (H=5: the LSTM step GEMM goes to the brgemm micro-kernel)."""
    cell = _cell(family, kw, I=8, H=H)
    p = _setup(cell, torch.float32)[0]
    bs = [16, 16, 9]
    x = torch.randn(sum(bs), 8, dtype=torch.float32)
    h0 = tuple(torch.randn(16, s, dtype=torch.float32) for s in cell.state_sizes())
    mask = torch.bernoulli(torch.full((16, h0[0].shape[1]), 0.8, dtype=torch.float32)) / 0.8
    with torch.no_grad():
        ref = loop_direction(
            cell, p, cell.project_input(p, x), bs, h0, False, StepContext(recurrent_mask=mask)
        )
        for use_ext in [False] + ([True] if not ext.disabled() and ext.ops() is not None else []):
            got = K.run_direction(cell, p, K.project_input(cell, p, x), bs, h0, False, mask, use_ext)
            _close([ref[0], *ref[1]], [got[0], *got[1]], 2e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["gru_cho", "mut1", "mut2", "mut3", "mut3-ra"])
def test_gru_form_infinite_state_matches_equations(backend, name, dtype):
    """Reset-before GRU h = (1 - z) n + z h_{t-1}, MUT1-3 h = z n + (1 - z) h_{t-1}: the fused
    kernels and the loop computed them with lerp, whose branch gives NaN for an infinite h_{t-1}
    (Cho at z = 1, MUT at z < 1/2) where the equations keep the inf. Positive W_hh saturates a
    +inf row's r (and Cho's z) to 1, n to 1: inf (MUT2's z = 1: NaN, as its equation); b_z puts
    MUT1/3's z of the inf units on both sides of 1/2; a -inf row gets r = 0, NaN; 1e30 stays
    finite. First step against the equations written out from the cell's gates, all steps
    fused against the loop."""
    cls, kw = LAYERS[name]
    torch.manual_seed(0)
    loop, fused = cls(3, 4, impl="loop", **kw).to(dtype), cls(3, 4, impl="fused", **kw).to(dtype)
    cell = rnnkit.GRUCell(3, 4, **kw).to(dtype)
    with torch.no_grad():
        loop.weight_hh_l0.abs_()
        loop.bias_ih_l0[4:8] = torch.tensor([-4.0, -1.0, 1.0, 4.0])  # b_z
        fused.load_state_dict(loop.state_dict())
        cell.load_state_dict({k.removesuffix("_l0"): v for k, v in loop.state_dict().items()})
        x, h0 = torch.randn(5, 3, 3, dtype=dtype), torch.randn(1, 3, 4, dtype=dtype)
        h0[0, 0, 0], h0[0, 0, 3], h0[0, 1, 2], h0[0, 2, 1] = float("inf"), float("inf"), float("-inf"), 1e30
        p, h = cell.params(), h0[0]
        g = cell.cell.gates(p, cell.cell.project_input(p, x[0]), (h,))
        z, n = g["z"], g["n"]
        eq = (1 - z) * n + z * h if "variant" not in kw else z * n + (1 - z) * h
        (ref, ref_hn), (out, hn) = loop(x, h0), fused(x, h0)
    assert eq.isinf().any() != (name == "mut2") and eq.isnan().any()
    if name in ("mut1", "mut3", "mut3-ra"):
        assert z[0, 0] < 0.5 < z[0, 3]
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for o in (ref[0], out[0]):
        torch.testing.assert_close(o, eq, atol=tol, rtol=tol, equal_nan=True)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol, equal_nan=True)
    torch.testing.assert_close(hn, ref_hn, atol=tol, rtol=tol, equal_nan=True)
