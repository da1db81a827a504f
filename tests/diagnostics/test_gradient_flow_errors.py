"""gradient_flow's and the replay's refusals: bad input, states, arguments and labels get clear
errors naming what was expected and what was given (the numbers: test_gradient_flow.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.diagnostics import gradient_flow, replay


def test_replay_unbatched_and_errors():
    m = rnnkit.GRU(3, 4)
    x = torch.randn(5, 3)
    torch.testing.assert_close(replay(m, x)[0], m(x)[0])
    with pytest.raises(ValueError, match="input_size=3"):
        replay(m, torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match="PackedSequence"):
        replay(m, nn.utils.rnn.pack_sequence([torch.randn(3, 3)]))
    with pytest.raises(ValueError, match="h_0 of shape"):
        replay(m, torch.randn(5, 2, 3), torch.zeros(1, 3, 4))
    with pytest.raises(ValueError, match="contains no recurrent layer"):
        gradient_flow(nn.Linear(2, 2), torch.randn(2, 2), lambda y: y.sum())
    with pytest.raises(ValueError, match="RNN/LSTM/GRU"):
        replay(nn.Linear(2, 2), torch.randn(2, 2))


def test_packed_input_to_a_model_is_a_clear_error():
    """A PackedSequence (a namedtuple) was splatted into the model's forward as four arguments
    (a TypeError from the model); it is one input, which the replay names as unsupported."""
    net = nn.Sequential(rnnkit.GRU(3, 4))
    packed = nn.utils.rnn.pack_sequence([torch.randn(3, 3), torch.randn(2, 3)])
    with pytest.raises(ValueError, match="dense \\(padded\\) input only, got a PackedSequence"):
        gradient_flow(net, packed, lambda y: y[0].data.sum())


@pytest.mark.parametrize(
    "make", [lambda: rnnkit.LSTM(3, 4), lambda: nn.GRU(3, 4), lambda: rnnkit.MinGRU(3, 4)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.long])
def test_input_dtype_other_than_the_parameters_is_a_clear_error(make, dtype):
    """The layers refuse such input with the dtypes named; the replay failed in its first matmul
    ('mat1 and mat2 must have the same dtype') or in requires_grad_ ('only Tensors of floating
    point dtype')."""
    from rnnkit.diagnostics import activity, jacobian_spectrum

    m = make()  # float64 (the tests' default dtype)
    x = torch.ones(5, 2, 3, dtype=dtype)
    for diagnose in (gradient_flow, activity, jacobian_spectrum):
        with pytest.raises(ValueError, match=f"input has dtype {dtype} but the parameters are torch.float64"):
            diagnose(m, x)


def test_initial_state_errors_name_the_state_as_given():
    """An unbatched input's h_0 was checked after adding its batch dimension: the error asked
    for (1, 1, 4) and reported (1, 1, 2, 4) for a given (1, 2, 4); a state of another dtype
    failed in the first matmul or in requires_grad_."""
    m = rnnkit.LSTM(3, 4)
    c0 = torch.zeros(1, 4)
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(1, 4\), got \(1, 2, 4\)"):
        gradient_flow(m, torch.randn(5, 3), hx=(torch.zeros(1, 2, 4), c0))
    assert gradient_flow(m, torch.randn(5, 3), hx=(torch.zeros(1, 4), c0)).norms["l0"]["h"].shape == (5,)
    for dtype in (torch.float32, torch.long):
        hx = (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4, dtype=dtype))
        with pytest.raises(ValueError, match=f"c_0 has dtype {dtype} but the parameters are torch.float64"):
            gradient_flow(m, torch.randn(5, 2, 3), hx=hx)


def test_arguments_gradient_flow_would_ignore_are_errors():
    """``hx`` for a model that is not a recurrent layer, and ``loss`` next to a ``loss_fn``, were
    silently ignored (the measurement was of another initial state or another loss)."""
    m = rnnkit.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    net = nn.Sequential(m)
    with pytest.raises(ValueError, match="hx is the initial state of a recurrent layer; Sequential is not"):
        gradient_flow(net, x, lambda y: y[0].sum(), hx=torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="loss='per_step' chooses the probe used without a loss_fn"):
        gradient_flow(m, x, lambda y: y[0].sum(), loss="per_step")
    assert gradient_flow(m, x).kind == "last" and gradient_flow(m, x, loss="per_step").kind == "per_step"
    assert gradient_flow(net, x, lambda y: y[0].sum()).kind == "custom"
    for bad in ("", 0, False):  # not None: no default, an error as any other bad name
        with pytest.raises(ValueError, match=r"loss must be one of \('last', 'per_step'\), got"):
            gradient_flow(m, x, loss=bad)


@pytest.mark.parametrize(
    "make", [lambda: rnnkit.LSTM(3, 4), lambda: nn.GRU(3, 4, batch_first=True), lambda: rnnkit.MinGRU(3, 4)]
)
@pytest.mark.parametrize("shape", [(0, 2, 3), (4, 0, 3), (0, 3)], ids=["T=0", "B=0", "unbatched-T=0"])
def test_empty_input_is_a_clear_error(make, shape):
    """No step or no sequence: nothing to measure. It was a reshape error ('cannot reshape tensor
    of 0 elements') deep in the replay, or an IndexError for the parallel layers."""
    from rnnkit.diagnostics import activity, jacobian_spectrum

    m = make()
    x = torch.randn(*shape)
    if getattr(m, "batch_first", False) and len(shape) == 3:
        x = x.transpose(0, 1)
    for diagnose in (gradient_flow, activity, jacobian_spectrum):
        with pytest.raises(ValueError, match=r"at least one time step and one sequence, got input of shape"):
            diagnose(m, x)


def test_per_step_factor_names_the_known_labels_and_states():
    """An unknown label or state raised a bare KeyError ('l2', 'x') naming neither the argument
    nor what there is."""
    gf = gradient_flow(torch.nn.LSTM(3, 4, num_layers=2), torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match=r"no layer label 'l2'; the labels are 'l0', 'l1'"):
        gf.per_step_factor("l2")
    with pytest.raises(ValueError, match=r"l1 has no state 'x'; its states are 'h', 'c'"):
        gf.per_step_factor("l1", "x")
    with pytest.raises(ValueError, match=r"no layer label 'l9'"):
        gf.distance("l9")
    assert np.isfinite(gf.per_step_factor("l1", "c"))
