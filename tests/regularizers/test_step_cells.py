"""Regularizers of the single-step cells: caller-held per-sequence masks, per-step zoneout."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
from rnnkit.regularizers import StepMasks

from .reference import grads, recorder, step  # noqa: F401 - recorder is a fixture

CELLS = {
    "rnn": (rnnkit.RNNCell, nn.RNNCell),
    "lstm": (rnnkit.LSTMCell, nn.LSTMCell),
    "gru": (rnnkit.GRUCell, nn.GRUCell),
}
OPTS = [
    {"recurrent_dropout": 0.5},
    {"weight_drop": 0.5},
    {"zoneout": 0.4},
    {"recurrent_dropout": 0.3, "weight_drop": 0.3, "zoneout": 0.3},
]


def _as_tuple(s):
    return s if isinstance(s, tuple) else (s,)


@pytest.mark.parametrize("opts", OPTS, ids=lambda o: "+".join(o))
@pytest.mark.parametrize("family", list(CELLS))
def test_steps_match_reference(recorder, family, opts):  # noqa: F811
    torch.manual_seed(0)
    cell = CELLS[family][0](3, 4, **opts).train()
    T, B = 4, 3
    xs = torch.randn(T, B, 3, requires_grad=True)
    h0 = tuple(torch.randn(B, s, requires_grad=True) for s in cell.cell.state_sizes())
    masks = cell.sample_masks(B)
    state, outs = h0, []
    for t in range(T):
        state = _as_tuple(cell(xs[t], state if len(state) > 1 else state[0], masks=masks))
        outs.append(state[0])
    got = [torch.stack(outs), *state]

    log = list(recorder)
    p = cell.params()
    if cell.weight_drop:  # drawn first, as the layers draw them
        p = dict(p, weight_hh=p["weight_hh"] * log.pop(0)[1])
    rec = log.pop(0)[1] if cell.recurrent_dropout else None
    state, outs = h0, []
    for t in range(T):
        new = step(cell, family, p, xs[t], state, rec)
        if cell.zoneout:
            new = tuple(
                m * s0 + (1 - m) * s1 for s0, s1, (_, m) in zip(state, new, [log.pop(0) for _ in new])
            )
        state = new
        outs.append(state[0])
    assert not log
    exp = [torch.stack(outs), *state]
    for u, v in zip(got, exp):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)
    leaves = [xs, *h0, *cell.parameters()]
    for u, v in zip(grads(got, leaves), grads(exp, leaves)):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("family", list(CELLS))
def test_eval_ignores_masks_and_equals_torch(family):
    torch.manual_seed(0)
    ours = CELLS[family][0](3, 4, recurrent_dropout=0.5, weight_drop=0.5)
    torch.manual_seed(0)
    theirs = CELLS[family][1](3, 4)
    ours.eval()
    x = torch.randn(2, 3)
    masks = ours.sample_masks(2)
    for a, b in zip(_as_tuple(ours(x, masks=masks)), _as_tuple(theirs(x))):
        torch.testing.assert_close(a, b)
    for a, b in zip(_as_tuple(ours(x)), _as_tuple(theirs(x))):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "zoneout,probs", [(0.3, (0.3, 0.3)), ((0.2, 0.6), (0.6, 0.2)), ({"h": 0.5}, (0.5, 0.0))]
)
def test_lstm_cell_zoneout_eval_expectation_unbatched(zoneout, probs):
    torch.manual_seed(0)
    ours = rnnkit.LSTMCell(3, 4, zoneout=zoneout).eval()
    torch.manual_seed(0)
    theirs = nn.LSTMCell(3, 4)
    x, h, c = torch.randn(3), torch.randn(4), torch.randn(4)
    h1, c1 = theirs(x, (h, c))
    got = ours(x, (h, c))  # unbatched, no masks needed
    torch.testing.assert_close(got[0], probs[0] * h + (1 - probs[0]) * h1)
    torch.testing.assert_close(got[1], probs[1] * c + (1 - probs[1]) * c1)


def test_missing_or_wrong_masks_are_clear_errors():
    cell = rnnkit.LSTMCell(3, 4, recurrent_dropout=0.5).train()
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"call masks = cell.sample_masks\(2\) once per sequence"):
        cell(x)
    with pytest.raises(ValueError, match="masks were sampled for batch_size=3, but the input has 2"):
        cell(x, masks=cell.sample_masks(3))
    other = rnnkit.LSTMCell(3, 4, weight_drop=0.5)
    # (named neither what the cell expects nor what the masks hold: "its regularizer options differ")
    expected = (
        "masks were not sampled by this cell: its recurrent_dropout=0.5 / weight_drop=0.0 expect a recurrent "
        "mask and no weight-drop masks, got no recurrent mask and weight-drop masks"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        cell(x, masks=other.sample_masks(2))
    with pytest.raises(ValueError, match="batch_size must be a non-negative int, got -1"):
        cell.sample_masks(-1)
    # a numpy int (from an array of sizes) is taken, as the layers take one
    assert cell(x, masks=cell.sample_masks(np.int64(2)))[0].shape == (2, 4)
    with pytest.raises(ValueError, match=r"zoneout=\(p_c, p_h\) needs a cell whose state holds h and c"):
        rnnkit.GRUCell(3, 4, zoneout=(0.1, 0.2))
    with pytest.raises(TypeError):
        rnnkit.GRUCell(3, 4, not_an_option=1)


def test_masks_of_another_cells_size_or_dtype_are_clear_errors():
    """Masks of a cell with the same options but another hidden size (or dtype) were taken: a
    recurrent mask (B, 1) broadcast over (B, H) silently (one unit's mask for all), others failed
    inside the step on a size or dtype mismatch. They are refused naming expected and received."""
    x = torch.randn(3, 4)
    cell = rnnkit.GRUCell(4, 6, recurrent_dropout=0.3).train()
    with pytest.raises(ValueError, match=r"recurrent mask of shape \(3, 6\).*got \(3, 1\)"):
        cell(x, masks=rnnkit.GRUCell(4, 1, recurrent_dropout=0.3).sample_masks(3))
    cell = rnnkit.LSTMCell(4, 6, weight_drop=0.2).train()
    with pytest.raises(ValueError, match=r"weight_hh mask of shape \(24, 6\).*got \(20, 5\)"):
        cell(x, masks=rnnkit.LSTMCell(4, 5, weight_drop=0.2).sample_masks(3))
    other = rnnkit.LSTMCell(4, 6, weight_drop=0.2, dtype=torch.float32)
    with pytest.raises(ValueError, match="weight_hh mask has dtype torch.float32 but the parameters are"):
        cell(x, masks=other.sample_masks(3))


def test_masks_are_per_sequence_and_reproducible():
    cell = rnnkit.GRUCell(3, 50, recurrent_dropout=0.5, weight_drop=0.5)
    torch.manual_seed(0)
    a = cell.sample_masks(4)
    torch.manual_seed(0)
    b = cell.sample_masks(4)
    assert isinstance(a, StepMasks) and a.recurrent.shape == (4, 50) and set(a.weights) == {"weight_hh"}
    assert torch.equal(a.recurrent, b.recurrent) and torch.equal(
        a.weights["weight_hh"], b.weights["weight_hh"]
    )
    assert not torch.equal(a.recurrent[0], a.recurrent[1])
    assert "recurrent_dropout=0.5" in repr(cell)


@pytest.mark.parametrize("family", list(CELLS))
def test_same_seed_same_masks_as_the_layer(family):
    """Stepping the cell with masks drawn under a seed is the one-layer layer's training run
    under that seed: the cell drew its recurrent-dropout mask before the weight-drop masks,
    the layers after, so with both options the two drew different masks."""
    kw = {"recurrent_dropout": 0.4, "weight_drop": 0.4}
    cell = CELLS[family][0](3, 5, dtype=torch.float64, **kw).train()
    layer = getattr(rnnkit, family.upper())(3, 5, dtype=torch.float64, **kw).train()
    layer.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    torch.manual_seed(5)
    want, _ = layer(x)
    torch.manual_seed(5)
    masks, state, outs = cell.sample_masks(3), None, []
    for x_t in x:
        state = cell(x_t, state, masks=masks)
        outs.append(_as_tuple(state)[0])
    torch.testing.assert_close(torch.stack(outs), want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("opts", OPTS, ids=lambda o: "+".join(o))
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("family", list(CELLS))
def test_empty_batch(family, opts, training):
    """An empty batch ``(0, H_in)``, which torch.nn's cells and rnnkit's layers take: in training
    the masks it needs could not be drawn (``sample_masks(0)`` was refused)."""
    cell = CELLS[family][0](3, 4, **opts).train(training)
    x = torch.randn(0, 3, requires_grad=True)
    want = _as_tuple(CELLS[family][1](3, 4)(x))
    for hx in (None, want if len(want) > 1 else want[0]):
        got = _as_tuple(cell(x, hx, masks=cell.sample_masks(0)))
        assert [g.shape for g in got] == [w.shape for w in want]
        sum(g.sum() for g in got).backward()
    assert x.grad.shape == (0, 3)


def test_recurrent_mask_of_a_cell_with_extra_state_is_on_h():
    """Recurrent dropout's mask is ``(B, S_0)``, on ``h_{t-1}`` only, also when the state has
    components of other sizes (FGR's ``gates (B, 3H)``): one step equals the papers' step from
    ``(h ⊙ m, c, gates)``."""
    from tests.cells import papers

    torch.manual_seed(0)
    cell = rnnkit.LSTMCell(3, 4, full_gate_recurrence=True, peephole=True, recurrent_dropout=0.5).train()
    with torch.no_grad():
        cell.weight_peephole.uniform_(-0.5, 0.5)
    B = 3
    masks = cell.sample_masks(B)
    assert masks.recurrent.shape == (B, 4)
    assert set(masks.recurrent.unique().tolist()) <= {0.0, 2.0}
    x = torch.randn(B, 3)
    state = (torch.randn(B, 4), torch.randn(B, 4), torch.rand(B, 12))
    got = cell(x, state, masks=masks)
    p = dict(cell.named_parameters())
    opts = {"full_gate_recurrence": True, "peephole": True}
    _, want = papers.lstm(p, opts, x[None], (state[0] * masks.recurrent, *state[1:]))
    assert len(got) == len(want) == 3
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, atol=1e-12, rtol=1e-12)
