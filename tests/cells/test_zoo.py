"""Every variant of the zoo against its unfused reference, and the layer-level properties.

For each variant: forward, final state and every gradient (input, initial state, parameters)
equal the reference of :mod:`tests.cells.reference`; ``gradcheck`` in float64; a packed
batch equals each sequence alone; bidirectional equals a forward run plus a run over the
reversed sequences; the single-step ``*Cell`` equals the reference step.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import reference as ref
from .helpers import (
    CELLS,
    CONFIGS,
    LAYERS,
    as_hx,
    as_tuple,
    build,
    config_id,
    initial_state,
    randomize,
    ref_options,
)

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def _compare_all(got, want, leaves, tol=1e-10):
    assert len(got) == len(want)
    for u, v in zip(got, want):
        assert u.shape == v.shape
        torch.testing.assert_close(u, v, atol=tol, rtol=tol)
    weights = [torch.randn_like(t) for t in got]
    ga = torch.autograd.grad(got, leaves, weights, allow_unused=True)
    gb = torch.autograd.grad(want, leaves, weights, allow_unused=True)
    for u, v in zip(ga, gb):
        assert (u is None) == (v is None)
        if u is not None:
            torch.testing.assert_close(u, v, atol=tol, rtol=tol)


# Every variant with and without biases; batch norm also in eval mode (the only variant
# whose modes differ); forget_bias needs a bias.
REF_CASES = [
    pytest.param(case, bias, training, id=f"{config_id(case)}-bias={bias}-{'train' if training else 'eval'}")
    for case in CONFIGS
    for bias in (True, False)
    for training in ((True, False) if case[1].get("norm") == "batch" else (True,))
    if bias or "forget_bias" not in case[1]
]


@pytest.mark.parametrize("case,bias,training", REF_CASES)
def test_layer_matches_reference(case, bias, training):
    family, opts = case
    m = build(family, opts, 3, 4, 2, bidirectional=True, bias=bias, impl="loop").train(training)
    T, B = 5, 3
    x = torch.randn(T, B, 3, requires_grad=True)
    h0 = initial_state(m, B)
    want_out, want_state, stats = ref.run_stack(m, family, ref_options(family, opts), x, h0)
    out, state = m(x, as_hx(h0))
    got = [out, *as_tuple(state)]
    _compare_all(got, [want_out, *want_state], [x, *h0, *m.parameters()])
    if stats:  # batch norm: the running statistics moved (or not) exactly as the reference's
        buffers = dict(m.named_buffers())
        for (k, d), bn in zip([(k, d) for k in range(2) for d in range(2)], stats):
            suffix = f"_l{k}" + ("_reverse" if d else "")
            for g in ("ih", "hh", "c"):
                torch.testing.assert_close(buffers[f"running_mean_{g}{suffix}"], bn[g].mean)
                torch.testing.assert_close(buffers[f"running_var_{g}{suffix}"], bn[g].var)


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_gradcheck(case):
    family, opts = case
    m = build(family, opts, 2, 3, 1, bidirectional=True, impl="loop")
    x = torch.randn(3, 2, 2, requires_grad=True)
    h0 = initial_state(m, 2)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())

    def fn(x, *args):
        state, ps = args[: len(h0)], args[len(h0) :]
        out, hn = functional_call(m, dict(zip(names, ps)), (x, as_hx(state)))
        return (out, *as_tuple(hn))

    assert torch.autograd.gradcheck(fn, (x, *h0, *params))


def _packed_case(case, L=2):
    family, opts = case
    m = build(family, opts, 3, 4, L, bidirectional=True, batch_first=True, impl="loop")
    if opts.get("norm") == "batch":
        m.eval()  # in training, batch statistics couple the sequences of a batch by design
    return m


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_packed_equals_each_sequence_alone(case):
    m = _packed_case(case)
    lengths = torch.tensor([3, 6, 1, 4])
    x = torch.randn(4, 6, 3)
    h0 = initial_state(m, 4)
    out, hn = m(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False), as_hx(h0))
    padded, _ = pad_packed_sequence(out, batch_first=True)
    for i, n in enumerate(lengths.tolist()):
        alone, h_alone = m(x[i : i + 1, :n], as_hx(tuple(s[:, i : i + 1] for s in h0)))
        torch.testing.assert_close(padded[i : i + 1, :n], alone)
        assert torch.all(padded[i, n:] == 0)
        for s, s_alone in zip(as_tuple(hn), as_tuple(h_alone)):
            torch.testing.assert_close(s[:, i], s_alone[:, 0])


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_bidirectional_is_forward_plus_reversed_run(case):
    family, opts = case
    bi = _packed_case(case, L=1)
    uni = LAYERS[family](3, 4, 1, batch_first=True, impl="loop", **opts).train(bi.training)
    lengths = torch.tensor([2, 5, 4])
    x = torch.randn(3, 5, 3)
    out, _ = bi(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    out, _ = pad_packed_sequence(out, batch_first=True)
    H = out.shape[-1] // 2
    sd = bi.state_dict()
    fwd = {k: v for k, v in sd.items() if not k.endswith("_reverse")}
    bwd = {k[: -len("_reverse")]: v for k, v in sd.items() if k.endswith("_reverse")}
    for i, n in enumerate(lengths.tolist()):
        seq = x[i : i + 1, :n]
        uni.load_state_dict(fwd)
        torch.testing.assert_close(out[i : i + 1, :n, :H], uni(seq)[0])
        uni.load_state_dict(bwd)
        torch.testing.assert_close(out[i : i + 1, :n, H:], uni(seq.flip(1))[0].flip(1))


@pytest.mark.parametrize("case", CONFIGS, ids=config_id)
def test_step_cell_matches_reference_step(case):
    family, opts = case
    opts = {k: v for k, v in opts.items() if k != "proj_size"}  # torch's *Cell has no projection
    torch.manual_seed(0)
    cell = CELLS[family](3, 4, **opts)
    randomize(cell)
    x = torch.randn(5, 3, requires_grad=True)
    state = tuple(
        (torch.rand(5, s) if n == "gates" else torch.randn(5, s)).requires_grad_(True)
        for s, n in zip(cell.cell.state_sizes(), cell.cell.state_names)
    )
    p = cell.params()
    bn = None
    if opts.get("norm") == "batch":
        cell.eval()
        bn = {g: ref.RefBN(p[f"running_mean_{g}"], p[f"running_var_{g}"], False) for g in ("ih", "hh", "c")}
    want = ref.STEPS[family](p, opts, x, state, 1, bn)
    got = as_tuple(cell(x, as_hx(state), step=1))
    _compare_all(list(got), list(want), [x, *state, *cell.parameters()])
    assert cell.cell.describe() and cell.cell.describe() in repr(cell)
