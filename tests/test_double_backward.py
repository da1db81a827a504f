"""Second-order gradients (gradient penalties, MAML, Hessian-vector products).

The reference loop and torch's kernels are ordinary autograd graphs, so they differentiate twice
(``gradgradcheck`` in float64). The fused kernels' backward is explicit BPTT: for the standard
cells — with recurrent dropout, zoneout and peepholes too — a gradient taken with
``create_graph=True`` recomputes the direction differentiably (rnnkit/kernels/second_order.py),
checked by ``gradgradcheck``, against torch.nn and against the loop; for the variants and the
normalized cells differentiating it again must fail with an error that says what to use
instead — never return wrong numbers.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit.kernels._common import SECOND_ORDER

LOOP_CASES = [
    (rnnkit.LSTM, {}),
    (rnnkit.LSTM, {"peephole": True, "proj_size": 2}),
    (rnnkit.LSTM, {"norm": "layer"}),
    (rnnkit.GRU, {}),
    (rnnkit.GRU, {"variant": "mut1"}),
    (rnnkit.RNN, {"nonlinearity": "relu"}),
]


@pytest.mark.parametrize(("cls", "kw"), LOOP_CASES)
def test_reference_loop_differentiates_twice(cls, kw):
    """gradgradcheck of the output with respect to the input and the recurrent weight."""
    torch.manual_seed(0)
    m = cls(2, 3, bidirectional=True, impl="loop", **kw)
    x = torch.randn(3, 2, 2, requires_grad=True)
    params = dict(m.named_parameters())
    w = params.pop("weight_hh_l0")

    def f(x, w):
        return torch.func.functional_call(m, {**params, "weight_hh_l0": w}, (x,))[0]

    assert torch.autograd.gradgradcheck(f, (x, w), fast_mode=True)


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_torch_kernels_differentiate_twice(name):
    torch.manual_seed(0)
    m = getattr(rnnkit, name)(2, 3, impl="torch")
    x = torch.randn(4, 2, 2, requires_grad=True)
    (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("cls", "kw"),
    [(rnnkit.LSTM, {"norm": "batch"}), (rnnkit.GRU, {"norm": "layer"}), (rnnkit.GRU, {"variant": "mut2"}),
     (rnnkit.LSTM, {"input_gate": False, "zoneout": 0.2}), (rnnkit.RNN, {"norm": "layer", "zoneout": 0.1})],
)  # fmt: skip
def test_fused_kernels_refuse_second_order_with_a_clear_error(cls, kw, backend):
    """A gradient taken with create_graph=True through these kernels raises at once, whatever
    the first loss and however the second derivative is asked for: a delayed error (as
    once_differentiable's) was skipped by autograd.grad(..., inputs=) and by a constant
    incoming gradient (out.sum()), which then returned second-order results with these kernels'
    terms missing (GRU mut1: 0.0034 where the loop gives -0.1407)."""
    torch.manual_seed(0)
    m = cls(2, 3, impl="fused", **kw)
    x = torch.randn(4, 2, 2, requires_grad=True)
    torch.manual_seed(1)  # the same masks in both calls
    (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x)  # first order: right
    m.impl = "loop"
    torch.manual_seed(1)
    (ref,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x)
    torch.testing.assert_close(g, ref)
    m.impl = "fused"
    for first_loss in (lambda out: out.pow(2).sum(), lambda out: out.sum()):
        with pytest.raises(RuntimeError, match="first-order gradients only") as err:
            torch.autograd.grad(first_loss(m(x)[0]), x, create_graph=True)
        assert str(err.value) == SECOND_ORDER


@pytest.mark.parametrize(
    ("name", "kw"),
    [("GRU", {}), ("RNN", {"nonlinearity": "relu"}), ("LSTM", {}), ("LSTM", {"proj_size": 2})],
)
def test_fused_standard_cells_differentiate_twice(name, kw, backend):
    """gradgradcheck through the fused path (2 layers, bidirectional, packed, initial state):
    the second-order graph comes from the recomputed direction."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    m = getattr(rnnkit, name)(2, 3, num_layers=2, bidirectional=True, impl="fused", **kw)
    data = torch.randn(4, 3, 2)
    h = torch.randn(4, 3, kw.get("proj_size", 3), requires_grad=True)
    params = dict(m.named_parameters())
    w = params.pop("weight_hh_l1_reverse")

    def f(x, h, w):
        packed = pack_padded_sequence(x, torch.tensor([4, 3, 1]))
        state = (h, torch.zeros(4, 3, 3)) if name == "LSTM" else h
        out, _ = torch.func.functional_call(m, {**params, "weight_hh_l1_reverse": w}, (packed, state))
        return out.data

    x = data.requires_grad_(True)
    # the recomputed graph's first-order gradients are the fused backward's ...
    out = f(x, h, w)
    dy = torch.randn_like(out)
    plain = torch.autograd.grad(out, (x, h, w), dy, retain_graph=True)
    graph = torch.autograd.grad(out, (x, h, w), dy, create_graph=True)
    for u, v in zip(plain, graph):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-10)
    # ... and differentiating them again is right
    assert torch.autograd.gradgradcheck(f, (x, h, w), fast_mode=True)


@pytest.mark.parametrize("name", ["GRU", "RNN"])
def test_auto_float32_gradient_penalty_equals_torch(name, monkeypatch):
    """A gradient penalty through the default-dispatched (fused, asserted: on another path this
    compared torch with torch) float32 GRU/RNN gives torch.nn's first- and second-order gradients."""
    from rnnkit import dispatch
    from tests.fused.test_fused_kernels import require_ext

    require_ext()
    taken, select = [], dispatch.select
    monkeypatch.setattr(dispatch, "select", lambda *a, **k: taken.append(select(*a, **k)) or taken[-1])
    torch.manual_seed(0)
    ours = getattr(rnnkit, name)(3, 4, dtype=torch.float32)
    ref = getattr(torch.nn, name)(3, 4, dtype=torch.float32)
    ref.load_state_dict(ours.state_dict())
    res = []
    for m in (ours, ref):
        x = torch.linspace(-1, 1, 30, dtype=torch.float32).reshape(5, 2, 3).requires_grad_(True)
        (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
        g.pow(2).sum().backward()
        res.append([g.detach(), x.grad, *(p.grad for p in m.parameters())])
    assert taken == ["fused"]  # ours (ref is torch.nn's)
    for u, v in zip(*res):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("name", "kw"),
    [("GRU", {"weight_drop": 0.5}), ("LSTM", {"weight_drop": 0.3, "dropout": 0.2, "num_layers": 2}),
     ("RNN", {"locked_dropout": 0.3, "num_layers": 2}), ("LSTM", {"zoneout": (0.2, 0.1)}),
     ("LSTM", {"peephole": True, "recurrent_dropout": 0.3}),
     ("GRU", {"zoneout": 0.2, "recurrent_dropout": 0.2}),
     ("RNN", {"zoneout": 0.3, "recurrent_dropout": 0.2, "nonlinearity": "relu"}),
     ("LSTM", {"proj_size": 2, "zoneout": (0.2, 0.1), "recurrent_dropout": 0.2, "bidirectional": True})],
)  # fmt: skip
def test_second_order_with_regularizers_and_peepholes_equals_loop(name, kw):
    """Weight-drop, inter-layer and locked dropout (on the kernel's inputs), recurrent dropout,
    zoneout and peepholes (inside it): the fused path's second-order gradients (same masks)
    equal the reference loop's."""
    res = []
    for impl in ("fused", "loop"):
        torch.manual_seed(0)
        m = getattr(rnnkit, name)(3, 4, impl=impl, **kw)
        x = torch.linspace(-1, 1, 30).reshape(5, 2, 3).requires_grad_(True)
        torch.manual_seed(5)
        (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
        g.pow(2).sum().backward()
        res.append([g.detach(), x.grad, *(p.grad for p in m.parameters())])
    for u, v in zip(*res, strict=True):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-10)
