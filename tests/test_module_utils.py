"""What a PyTorch user does to a recurrent module beyond calling it — torch.nn.utils'
parametrizations and pruning, replaced parameters, ``reset_parameters`` — against torch.nn
doing the same to its own layer."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, prune

import rnnkit

FAMILIES = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"]


def _old_weight_norm(m: nn.Module, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still in use
        nn.utils.weight_norm(m, name)


CHANGES = {  # name -> f(module, attribute): what the user does to one weight
    "parametrize-weight_norm": lambda m, a: parametrizations.weight_norm(m, a),
    "parametrize-orthogonal": lambda m, a: parametrizations.orthogonal(m, a),
    "prune": lambda m, a: prune.l1_unstructured(m, a, amount=0.5),
    "old-weight_norm": _old_weight_norm,
    "plain-tensor": lambda m, a: setattr(m, a, m._parameters.pop(a).detach() * 0.5),
    "raw-parameter": lambda m, a: (  # torchnlp's WeightDrop: <name>_raw, dropped into <name> per call
        m.register_parameter(a + "_raw", nn.Parameter(m._parameters.pop(a).detach())),
        setattr(m, a, getattr(m, a + "_raw").detach() * 0.5),
    ),
}


def _pair(family: str):
    torch.manual_seed(0)
    theirs, ours = getattr(nn, family)(3, 4), getattr(rnnkit, family)(3, 4)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.mark.parametrize("change", list(CHANGES))
@pytest.mark.parametrize("family", FAMILIES)
def test_reset_parameters_after_a_weight_change_as_torch_nn(family, change):
    # torch.nn re-draws every parameter in parameters() order: a parametrized weight's originals,
    # a pruned weight's _orig; a plain tensor (not a parameter) it leaves alone
    theirs, ours = _pair(family)
    suffix = "" if family.endswith("Cell") else "_l0"
    for m in (theirs, ours):
        CHANGES[change](m, "weight_hh" + suffix)
        CHANGES[change](m, "weight_ih" + suffix) if change == "prune" else None
    x = torch.randn(5, 2, 3)[0 if family.endswith("Cell") else slice(None)]
    for m in (theirs, ours):
        torch.manual_seed(1)
        m.reset_parameters()
    want, got = dict(theirs.named_parameters()), dict(ours.named_parameters())
    assert list(got) == list(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    out_t, out_o = theirs(x), ours(x)
    out_t, out_o = (out_t[0], out_o[0]) if isinstance(out_t, tuple) else (out_t, out_o)
    torch.testing.assert_close(out_o, out_t, rtol=0, atol=1e-12)


def test_reset_parameters_draws_a_tied_weight_once_as_torch_nn():
    theirs, ours = (lib.LSTM(3, 3, bidirectional=True) for lib in (nn, rnnkit))
    for m in (theirs, ours):
        m.weight_hh_l0_reverse = m.weight_hh_l0
        torch.manual_seed(1)
        m.reset_parameters()
    for (name, want), got in zip(theirs.named_parameters(), ours.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize(
    "name, shape",
    [
        ("weight_hh_l0", (8, 4)),
        ("weight_hh_l0", (16, 3)),
        ("weight_ih_l0", (16, 2)),
        ("weight_ih_l0", (8, 3)),
    ],
)
def test_replaced_weight_of_another_shape_is_refused_on_torchs_cpu_lstm(name, shape, packed, dtype):
    # torch's CPU LSTM kernel (oneDNN) reads its weights by the layer's sizes, unchecked: a smaller
    # replacement was read out of bounds, silently (float64 fails in a matmul, the fused path checks)
    m = rnnkit.LSTM(3, 4, impl="torch", dtype=dtype)
    setattr(m, name, nn.Parameter(torch.randn(shape, dtype=dtype)))
    x = torch.randn(5, 2, 3, dtype=dtype)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, [5, 3])
    expected = re.escape(str(tuple(getattr(rnnkit.LSTM(3, 4), name).shape)))
    with pytest.raises(rnnkit.RecurrentInputError, match=rf"{name}.*{expected}.*{re.escape(str(shape))}"):
        m(x)
