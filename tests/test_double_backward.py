"""Second-order gradients (gradient penalties, MAML, Hessian-vector products).

The reference loop and torch's kernels are ordinary autograd graphs, so they differentiate twice
(``gradgradcheck`` in float64). The fused kernels' backward is explicit BPTT: differentiating it
again must fail with an error that says what to use instead — never return wrong numbers.
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


@pytest.mark.parametrize("backend", ["ext", "pure"])
@pytest.mark.parametrize(
    ("cls", "kw"),
    [(rnnkit.GRU, {}), (rnnkit.RNN, {}), (rnnkit.LSTM, {}), (rnnkit.LSTM, {"norm": "batch"}),
     (rnnkit.GRU, {"variant": "mut2"}), (rnnkit.LSTM, {"zoneout": 0.2})],
)  # fmt: skip
def test_fused_kernels_refuse_second_order_with_a_clear_error(cls, kw, backend, monkeypatch):
    import rnnkit.kernels as K

    if backend == "ext":
        from tests.fused.test_fused_kernels import require_ext

        require_ext()
    else:
        monkeypatch.setattr(K, "backend", lambda x: "pure")
    torch.manual_seed(0)
    m = cls(2, 3, impl="fused", **kw)
    x = torch.randn(4, 2, 2, requires_grad=True)
    torch.manual_seed(1)  # the same zoneout masks in both calls
    (g,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)  # first order: fine
    m.impl = "loop"
    torch.manual_seed(1)
    (ref,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x)
    torch.testing.assert_close(g, ref)  # and right
    with pytest.raises(RuntimeError, match="first-order gradients only") as err:
        g.pow(2).sum().backward()
    assert str(err.value) == SECOND_ORDER
