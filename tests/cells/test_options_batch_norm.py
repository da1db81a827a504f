"""The zoo's batch-norm option: train and eval statistics, empty batches, the step slot, max_len."""

from __future__ import annotations

import pytest
import torch

import rnnkit

from . import reference as ref
from .helpers import as_hx, build, initial_state

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


def test_batch_norm_train_eval():
    m = build("lstm", {"norm": "batch", "max_len": 3}, 3, 4, 1)
    x = torch.randn(6, 5, 3)
    before = m.running_mean_ih_l0.clone()
    m.train()
    y_train = m(x)[0]
    assert not torch.equal(m.running_mean_ih_l0, before)  # statistics moved
    # In training, a row's output depends on the other rows (batch statistics) ...
    assert not torch.allclose(m(x[:, :2])[0], y_train[:, :2])
    m.eval()
    stats = m.running_mean_ih_l0.clone()
    y_eval = m(x)[0]
    assert torch.equal(m.running_mean_ih_l0, stats)  # eval leaves the statistics alone
    assert not torch.allclose(y_eval, y_train)
    torch.testing.assert_close(m(x[:, :2])[0], y_eval[:, :2])  # ... in eval it does not
    # Beyond max_len the last step's statistics are reused (the reference clamps too).
    h0 = initial_state(m, 5)
    want, _, _ = ref.run_stack(m, "lstm", {"norm": "batch"}, x, h0)
    torch.testing.assert_close(m(x, as_hx(h0))[0], want)


def test_batch_norm_single_row_steps_train():
    m = build("lstm", {"norm": "batch"}, 3, 4, 1)
    y = m(torch.randn(4, 1, 3))[0]  # one sequence: variance 0, the output is finite
    assert torch.isfinite(y).all()
    assert not torch.isnan(m.running_var_ih_l0).any()  # no NaN from n - 1 = 0
    assert torch.all(m.running_var_ih_l0 > 0)


@pytest.mark.parametrize("training", [False, True])
def test_batch_norm_cell_empty_batch(training):
    """An empty batch (0, H_in), as torch.nn's cells take it: it raised IndexError (no row to
    read the step count from), and in training would have put the NaN mean of no rows into
    the running statistics."""
    cell = rnnkit.LSTMCell(3, 4, norm="batch", max_len=3).train(training)
    stats = {n: b.clone() for n, b in cell.named_buffers()}
    x = torch.randn(0, 3, requires_grad=True)
    for hx in (None, (torch.zeros(0, 4), torch.zeros(0, 4))):
        h, c = cell(x, hx, step=1)
        assert h.shape == c.shape == (0, 4)
        (h.sum() + c.sum()).backward()
    assert all(torch.equal(b, stats[n]) for n, b in cell.named_buffers())


@pytest.mark.parametrize(
    "step,match",
    [
        (-1, "step must be a non-negative int.*got -1"),
        (1.5, "step must be a non-negative int.*got 1.5"),
        (True, "step must be a non-negative int.*got True"),
        ("2", "step must be a non-negative int.*got '2'"),
        (torch.tensor(-1), "step must be a non-negative int.*got tensor"),
        (torch.tensor(1.0), "step must be a non-negative int.*got tensor"),
        (torch.tensor([1, 2]), "step must be a non-negative int.*got tensor"),
    ],
)
def test_cell_step_is_validated(step, match):
    """``step`` picks batch norm's statistics slot: a negative one silently read the last slot
    (Python indexing), a float or a bool was truncated by int(), a tensor failed in int()."""
    cell = rnnkit.LSTMCell(3, 4, norm="batch", max_len=5).eval()
    with pytest.raises(ValueError, match=match):
        cell(torch.randn(2, 3), step=step)


def test_cell_step_beyond_max_len_reuses_the_last_slot():
    cell = rnnkit.LSTMCell(3, 4, norm="batch", max_len=3).eval()
    for name, buf in cell.named_buffers():
        buf.copy_(torch.rand_like(buf) + (0.5 if "var" in name else 0))
    x = torch.randn(2, 3)
    torch.testing.assert_close(cell(x, step=9), cell(x, step=2))
    torch.testing.assert_close(cell(x, step=torch.tensor(1)), cell(x, step=1))  # as ONNX export passes it
    assert not torch.allclose(cell(x, step=1)[0], cell(x, step=2)[0])


def test_max_len_without_batch_norm_is_refused_by_the_cell():
    """max_len (the steps with their own batch-norm statistics) was silently ignored."""
    with pytest.raises(ValueError, match="needs norm='batch'"):
        rnnkit.LSTMCell(3, 4, max_len=8)
    assert rnnkit.LSTMCell(3, 4, norm="batch", max_len=8).running_mean_c.shape == (8, 4)
    assert rnnkit.LSTMCell(3, 4, norm="batch").running_mean_c.shape == (512, 4)  # the default
