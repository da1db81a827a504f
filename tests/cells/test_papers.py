"""Every cell of the zoo, on the reference loop and on the fused path, against the papers'
equations as written independently in :mod:`tests.cells.papers` (float64; outputs, final
states, batch norm's running statistics and the gradients of input, state and every
parameter), plus the documented initializations and layouts."""

from __future__ import annotations

import pytest
import torch

import rnnkit

from . import papers
from .test_zoo import _compare_all

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
LAYERS = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}

CASES = [
    ("lstm", {}),
    ("lstm", {"peephole": True}),  # Gers & Schmidhuber; Greff's vanilla LSTM
    ("lstm", {"peephole": True, "input_gate": False}),  # NIG
    ("lstm", {"peephole": True, "forget_gate": False}),  # NFG
    ("lstm", {"peephole": True, "output_gate": False}),  # NOG
    ("lstm", {"peephole": True, "input_activation": False}),  # NIAF
    ("lstm", {"peephole": True, "output_activation": False}),  # NOAF
    ("lstm", {"peephole": True, "coupled_gates": True}),  # CIFG
    ("lstm", {"peephole": True, "full_gate_recurrence": True}),  # FGR
    ("lstm", {"coupled_gates": True, "full_gate_recurrence": True, "proj_size": 2}),
    ("lstm", {"forget_bias": 1.0, "proj_size": 3}),
    ("lstm", {"norm": "layer"}),
    ("lstm", {"norm": "layer", "peephole": True, "proj_size": 2}),
    ("lstm", {"norm": "layer", "output_gate": False, "input_activation": False}),
    ("lstm", {"norm": "batch", "max_len": 3}),
    ("lstm", {"norm": "batch", "max_len": 9, "peephole": True, "proj_size": 2}),
    ("lstm", {"norm": "batch", "max_len": 2, "coupled_gates": True, "output_activation": False}),
    ("gru", {}),
    ("gru", {"reset_after": False}),
    ("gru", {"norm": "layer"}),
    ("gru", {"variant": "mut1"}),
    ("gru", {"variant": "mut2"}),
    ("gru", {"variant": "mut3"}),
    ("gru", {"variant": "mut1", "reset_after": True}),
    ("gru", {"variant": "mut3", "reset_after": True}),
    ("rnn", {}),
    ("rnn", {"nonlinearity": "relu"}),
    ("rnn", {"norm": "layer"}),
    ("rnn", {"norm": "layer", "nonlinearity": "relu"}),
]


def _id(case) -> str:
    family, o = case
    return family + "".join(f"-{k}={v}" for k, v in o.items())


def _build(family: str, o: dict, impl: str, I: int, H: int, bias: bool, L: int = 2):
    torch.manual_seed(1)
    try:
        m = LAYERS[family](I, H, L, bidirectional=True, bias=bias, impl=impl, **o)
    except ValueError as e:  # a configuration the fused path does not cover: said at build time
        assert impl == "fused", e
        pytest.skip(f"no fused kernel: {e}")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # every tensor away from its init, so zero/one inits cannot hide a term
        for p in m.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        for n, b in m.named_buffers():
            b.copy_(
                (0.5 + torch.rand(b.shape, generator=g))
                if "var" in n
                else 0.5 * torch.randn(b.shape, generator=g)
            )
    return m


def _state(m, B: int) -> tuple:
    shapes, names = m.state_shapes(B), m.cells[-1].state_names
    g = torch.Generator().manual_seed(3)
    return tuple(
        (torch.rand(s, generator=g) if n == "gates" else torch.randn(s, generator=g)).requires_grad_()
        for s, n in zip(shapes, names)
    )


@pytest.mark.parametrize("impl", ["loop", "fused"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_layer_follows_the_paper(case, bias, impl):
    family, o = case
    if not bias and "forget_bias" in o:
        pytest.skip("forget_bias needs a bias")
    modes = (True, False) if o.get("norm") == "batch" else (True,)
    for training in modes:
        m = _build(family, o, impl, 3, 4, bias).train(training)
        T, B = 5, 3  # T > max_len for the batch-norm cases: the last statistics are reused
        x = torch.randn(T, B, 3, generator=torch.Generator().manual_seed(4)).requires_grad_()
        s0 = _state(m, B)
        bufs = {k: v.clone() for k, v in m.named_buffers()}
        cell_opts = {k: v for k, v in o.items() if k not in ("proj_size", "max_len", "forget_bias")}
        want_y, want_s = papers.stack(m, family, cell_opts, x, s0, training, bufs)
        y, s = m(x, s0 if len(s0) > 1 else s0[0])
        s = s if isinstance(s, tuple) else (s,)
        _compare_all([y, *s], [want_y, *want_s], [x, *s0, *m.parameters()])
        for k, v in m.named_buffers():  # running statistics moved exactly as the paper's
            torch.testing.assert_close(v, bufs[k], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("impl", ["loop", "fused"])
@pytest.mark.parametrize("variant", ["mut1", "mut2"])
def test_mut_with_input_size_equal_to_hidden_size_reads_x_itself(variant, impl):
    """MUT1's ``tanh(x_t)`` and MUT2's ``r = σ(x_t + ...)``: no projection when I == H."""
    m = _build("gru", {"variant": variant}, impl, 4, 4, True, L=1)
    assert not any("xproj" in n for n, _ in m.named_parameters())
    x = torch.randn(5, 3, 4, requires_grad=True)
    s0 = _state(m, 3)
    want_y, want_s = papers.stack(m, "gru", {"variant": variant}, x, s0, True, {})
    y, s = m(x, s0[0])
    _compare_all([y, s], [want_y, *want_s], [x, *s0, *m.parameters()])


CELLS = {"lstm": rnnkit.LSTMCell, "gru": rnnkit.GRUCell, "rnn": rnnkit.RNNCell}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", [c for c in CASES if "proj_size" not in c[1]], ids=_id)
def test_step_cell_follows_the_paper(case, training):
    """The single-step ``*Cell`` (batch norm at time index 2: that step's statistics)."""
    family, o = case
    torch.manual_seed(1)
    cell = CELLS[family](3, 4, **o).train(training)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in cell.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        for n, b in cell.named_buffers():
            b.copy_(
                (0.5 + torch.rand(b.shape, generator=g)) if "var" in n else torch.randn(b.shape, generator=g)
            )
    sizes = [4] * (2 if family == "lstm" else 1) + ([12] if o.get("full_gate_recurrence") else [])
    s0 = tuple(torch.rand(3, n, generator=g).requires_grad_() for n in sizes)
    x = torch.randn(3, 3, generator=g).requires_grad_()
    bufs = {k: v.clone() for k, v in cell.named_buffers()}  # from slot 2 (or the last) on
    p = {**dict(cell.named_parameters()), **{k: v[min(2, len(v) - 1) :] for k, v in bufs.items()}}
    cell_opts = {k: v for k, v in o.items() if k not in ("max_len", "forget_bias")}
    _, want = papers.FAMILIES[family](p, cell_opts, x[None], s0, training)
    got = cell(x, s0 if len(s0) > 1 else s0[0], None, 2)
    _compare_all(list(got) if isinstance(got, tuple) else [got], list(want), [x, *s0, *cell.parameters()])
    for k, v in cell.named_buffers():
        torch.testing.assert_close(v, bufs[k], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "rnn"], ids=_id)
def test_diagnostics_gates_are_the_papers(case):
    """``rnnkit.diagnostics.activity`` reports the gates of the equations (CIFG's ``i = 1 - f``,
    the block input after its activation, MUT's ``z`` that gates the candidate)."""
    from rnnkit.diagnostics import activity

    family, o = case
    m = _build(family, o, "auto", 3, 4, True, L=1).eval()
    x = torch.randn(5, 3, 3)
    cell_opts = {k: v for k, v in o.items() if k not in ("proj_size", "max_len", "forget_bias")}
    for d, layer in enumerate(activity(m, x, sample=1)):
        trace: list = []
        s0 = tuple(torch.zeros(3, n[-1]) for n in m.state_shapes(3))
        bufs = {k: v.clone() for k, v in m.named_buffers()}
        papers.FAMILIES[family](
            papers.direction_params(m, 0, d, bufs), cell_opts, x.flip(0) if d else x, s0, False, trace
        )
        trace = trace[::-1] if d else trace
        assert set(layer.gates) == set(trace[0])
        for k, v in layer.gates.items():
            want = torch.stack([t[k][1] for t in trace]).detach()
            torch.testing.assert_close(torch.from_numpy(v), want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "rnn"], ids=_id)
def test_gates_hook_applies_the_contexts_recurrent_dropout_mask(case):
    """``cell.gates(p, xp, state, ctx)`` drops ``h_{t-1}`` with ``ctx.recurrent_mask`` as the step
    does: the papers' gates of one step from the state ``(h ⊙ m, c[, gates])``."""
    from rnnkit.cells import StepContext

    family, o = case
    m = _build(family, o, "loop", 3, 4, True, L=1).eval()
    cell, p = m.cells[0], m.layer_params(0, 0)
    x = torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(4))
    state = tuple(s[0].detach() for s in _state(m, 3))
    mask = torch.tensor([[0.0, 2.0, 2.0, 0.0], [2.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    mask = mask[:, : state[0].shape[1]]
    got = cell.gates(p, cell.project_input(p, x[0]), state, StepContext(recurrent_mask=mask))
    cell_opts = {k: v for k, v in o.items() if k not in ("proj_size", "max_len", "forget_bias")}
    bufs = {k: v.clone() for k, v in m.named_buffers()}
    trace: list = []
    papers.FAMILIES[family](
        papers.direction_params(m, 0, 0, bufs), cell_opts, x, (state[0] * mask, *state[1:]), False, trace
    )
    assert set(got) == set(trace[0])
    for k, v in got.items():
        torch.testing.assert_close(v, trace[0][k], atol=1e-12, rtol=1e-12, msg=k)


@pytest.mark.parametrize("impl", ["loop", "fused"])
def test_batch_norm_eval_beyond_max_len_uses_the_last_statistics(impl):
    """Cooijmans et al.: steps t >= T_max use the statistics of T_max - 1."""
    m = _build("lstm", {"norm": "batch", "max_len": 2}, impl, 3, 4, True, L=1).eval()
    x = torch.randn(6, 2, 3)
    with torch.no_grad():
        y0, _ = m(x)
        for n, b in m.named_buffers():
            b[1] += 0.5 if "mean" in n else 1.0
        y1, _ = m(x)
    # forward: step 0 reads slot 0, every later one slot 1; backward (counted from the end): the same
    assert torch.equal(y0[0, :, :4], y1[0, :, :4]) and torch.equal(y0[5, :, 4:], y1[5, :, 4:])
    assert (y0[1:, :, :4] - y1[1:, :, :4]).abs().amin() > 0
    assert (y0[:5, :, 4:] - y1[:5, :, 4:]).abs().amin() > 0


def test_documented_initializations():
    torch.manual_seed(0)
    m = rnnkit.LSTM(3, 4, 2, bidirectional=True, peephole=True, norm="batch", max_len=7)
    for d in ("_l0", "_l1_reverse"):
        assert torch.all(m.get_parameter("weight_peephole" + d) == 0)
        for g in ("ih", "hh", "c"):  # Cooijmans et al.: γ = 0.1 for every normalization
            assert torch.all(m.get_parameter(f"weight_bn_{g}{d}") == 0.1)
        assert not hasattr(m, "bias_bn_ih" + d) and not hasattr(m, "bias_bn_hh" + d)  # β_x = β_h = 0
        assert torch.all(m.get_parameter("bias_bn_c" + d) == 0)
        assert torch.all(m.get_buffer("running_mean_c" + d) == 0) and torch.all(
            m.get_buffer("running_var_ih" + d) == 1
        )
    n = rnnkit.LSTM(3, 4, norm="layer")
    for g, size in (("ih", 16), ("hh", 16), ("c", 4)):
        assert torch.equal(n.get_parameter(f"weight_ln_{g}_l0"), torch.ones(size))
        assert torch.equal(n.get_parameter(f"bias_ln_{g}_l0"), torch.zeros(size))


@pytest.mark.parametrize("opts", [{}, {"coupled_gates": True}, {"input_gate": False, "peephole": True}])
def test_forget_bias_is_an_init_of_every_layer_and_direction(opts):
    """Jozefowicz et al. (2015): the forget gate's bias starts 1 higher; nothing else changes."""
    torch.manual_seed(0)
    a = rnnkit.LSTM(3, 4, 2, bidirectional=True, **opts)
    torch.manual_seed(0)
    b = rnnkit.LSTM(3, 4, 2, bidirectional=True, forget_bias=1.0, **opts)
    f = (0 if opts.get("coupled_gates") or opts.get("input_gate") is False else 1) * 4
    for (k, u), (_, v) in zip(a.named_parameters(), b.named_parameters()):
        diff = torch.zeros_like(u)
        if k.startswith("bias_ih"):
            diff[f : f + 4] = 1.0
        torch.testing.assert_close(v - u, diff, msg=k)
    b.reset_parameters()  # a re-initialization applies it again, once
    for k, v in b.named_parameters():
        if k.startswith("bias_ih"):
            assert torch.all(v[f : f + 4] > 1 - 0.5 - 1e-12), k
    cell = rnnkit.LSTMCell(3, 4, forget_bias=2.0, **opts)
    cell.reset_parameters()
    assert torch.all(cell.bias_ih[f : f + 4] >= 2 - 0.5)


@pytest.mark.parametrize("family", ["lstm", "gru", "rnn"])
def test_stacked_input_sizes(family):
    """Layer 0 reads I features; a deeper layer reads D * (proj_size or H)."""
    kw = {"proj_size": 2} if family == "lstm" else {}
    m = LAYERS[family](3, 4, 3, bidirectional=True, **kw)
    out = 2 * (2 if kw else 4)
    assert m.weight_ih_l0.shape[1] == 3 and m.weight_ih_l0_reverse.shape[1] == 3
    assert m.weight_ih_l1.shape[1] == out and m.weight_ih_l2_reverse.shape[1] == out
