"""``reset_parameters`` of the parallel layers (their own initialization, not torch's) after what a
PyTorch user does to a weight: a parametrization, pruning, weight norm."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, prune

import rnnkit

LAYERS = {
    "mingru": lambda: rnnkit.MinGRU(3, 4, num_layers=2, bidirectional=True),
    "minlstm": lambda: rnnkit.MinLSTM(3, 4),
    "qrnn": lambda: rnnkit.QRNN(3, 4, num_layers=2),
    "lru": lambda: rnnkit.LRU(3, 3, state_size=5),
}


def _old_weight_norm(m: nn.Module, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still in use
        nn.utils.weight_norm(m, name)


CHANGES = {  # name -> (f(module, attribute), the tensor the draw lands in, or None: the weight itself)
    "orthogonal": (lambda m, a: parametrizations.orthogonal(m, a), "parametrizations.{}.original"),
    "prune": (lambda m, a: prune.l1_unstructured(m, a, amount=0.5), "{}_orig"),
    "parametrize-weight_norm": (lambda m, a: parametrizations.weight_norm(m, a), None),
    "old-weight_norm": (_old_weight_norm, None),
}


def _make(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return LAYERS[name]()


@pytest.mark.parametrize("name", LAYERS)
def test_a_plain_modules_draws_are_unchanged(name):
    m, old = _make(name), _make(name)
    torch.manual_seed(1)
    m.reset_parameters()
    torch.manual_seed(1)
    with torch.no_grad():  # what reset_parameters did before it drew where each weight is held
        for k in range(old.num_layers):
            for d in range(old.num_directions):
                old.init_params(old.layer_params(k, d), old.layer_input_size(k))
    for (key, want), got in zip(old.state_dict().items(), m.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("name", LAYERS)
def test_reset_parameters_redraws_a_changed_weight(name, change):
    """The draw went into ``getattr(module, attr)``: for a parametrized or pruned weight a computed
    tensor, so the weight was silently not reset."""
    plain, m = _make(name), _make(name)
    attr = next(a for a, p in m.named_parameters() if p.dim() == 2)
    f, where = CHANGES[change]
    f(m, attr)
    for mod in (plain, m):
        torch.manual_seed(1)
        mod.reset_parameters()
    want = getattr(plain, attr)
    if where is None:  # drawn whole, set through the weight norm: the weight is the plain draw
        m(torch.randn(2, 1, 3))  # the old weight_norm computes the weight in a forward pre-hook
        torch.testing.assert_close(getattr(m, attr), want, rtol=1e-12, atol=1e-12)
    else:  # drawn where the weight is held, as torch.nn's and rnnkit's standard layers do
        torch.testing.assert_close(m.get_parameter(where.format(attr)), want, rtol=0, atol=0)
    for key, t in plain.named_parameters():  # the other weights drawn as in a plain module
        if key != attr:
            torch.testing.assert_close(getattr(m, key), t, rtol=0, atol=0, msg=key)
