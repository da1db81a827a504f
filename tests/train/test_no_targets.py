"""Trainer: batches and steps without any target (all targets -100): no update, no loss."""

import math

import pytest
import torch

from rnnkit.train import Callback, Trainer

from .models import TinyLM, masked_mean_loss, sgd, tokens


def _with_empty_batch(T=5):
    """A batch with targets, then one whose targets are all ignored (-100), (T, 2) time-major."""
    x = tokens(4 * T).view(2, T, 2)
    y = tokens(4 * T, seed=1).view(2, T, 2).clone()
    y[1] = -100
    return [(x[0], y[0]), (x[1], y[1])]


@pytest.mark.parametrize("k1", [None, 3])
def test_batch_without_targets_makes_no_update(k1):
    """No target in the whole batch (the simple path, and TBPTT where every window is empty): no
    optimizer step (the simple path took one on zero gradients, which moves Adam's weights)."""
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=0.1)
    seen = []

    class Weights(Callback):
        def on_step_end(self, trainer, logs):
            seen.append([p.detach().clone() for p in model.parameters()])

    tr = Trainer(
        model, opt, tbptt_k1=k1, carry_state=False, log_every=2, callbacks=[Weights()], progress=False
    )
    tr.fit(_with_empty_batch() * 2)  # steps: targets, none, targets, none
    assert int(opt.state[model.out.bias]["step"]) == (2 if k1 is None else 4)  # 5 steps: 2 windows of k1=3
    for before, after in ((seen[0], seen[1]), (seen[2], seen[3])):  # the empty steps: weights kept
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(seen[1], seen[2], strict=True))
    assert tr.tokens_seen == 2 * 10 and math.isfinite(tr.losses[0]) and math.isfinite(tr.losses[2])


@pytest.mark.parametrize("k1", [None, 3])
def test_step_without_targets_has_no_loss_and_stays_out_of_log_averages(k1):
    """A step without any target has no loss: NaN in ``losses`` (it was 0.0, which pulled averages
    and the loss curve down; the simple path's NaN * 0 also poisoned its log row's sum). A log row
    averages the steps of its interval that had targets, and is NaN when none had."""
    torch.manual_seed(0)
    model = TinyLM()
    tr = Trainer(model, sgd(model), tbptt_k1=k1, log_every=2, carry_state=False, progress=False)
    tr.fit(_with_empty_batch() * 2)  # steps: targets, none, targets, none
    assert math.isnan(tr.losses[1]) and math.isnan(tr.losses[3])
    assert math.isfinite(tr.losses[0]) and math.isfinite(tr.losses[2])
    rows = [r for r in tr.history if r["split"] == "train"]
    assert [r["step"] for r in rows] == [2, 4]
    assert rows[0]["loss"] == pytest.approx(tr.losses[0]) and rows[1]["loss"] == pytest.approx(tr.losses[2])
    tr = Trainer(model, sgd(model), tbptt_k1=k1, log_every=1, carry_state=False, progress=False)
    tr.fit(_with_empty_batch()[1:])
    row = tr.history[-1]
    assert row["split"] == "train" and math.isnan(row["loss"]) and math.isnan(row["ppl"])
    assert math.isnan(tr.losses[0])


@pytest.mark.parametrize("step_fn", [None, lambda m, b, s: (masked_mean_loss(m(b[0])[0], b[1]), None)])
def test_zero_loss_of_a_batch_without_targets_has_zero_finite_gradients(step_fn):
    """Under DDP a rank without a target joins the others' gradient all-reduce with this loss: zero,
    with a zero (never NaN) gradient for every parameter, from the output or from step_fn's model."""
    torch.manual_seed(0)
    model = TinyLM()
    tr = Trainer(model, sgd(model), loss_fn=masked_mean_loss, step_fn=step_fn, progress=False)
    x, y = _with_empty_batch()[1]
    loss, _ = tr._forward(model, (x, y), None, zero=True)
    loss.backward()
    assert float(loss.detach()) == 0.0
    for p in model.parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))


@pytest.mark.parametrize("k1", [None, 3])
def test_a_step_without_targets_leaves_the_scheduler_alone(k1):
    """A step without any target makes no optimizer step, nor a scheduler step: as in torch's recipe
    (``scheduler.step()`` after ``optimizer.step()``) the schedule follows the updates. It was stepped
    anyway: the schedule ran ahead of the updates, and a first batch without targets stepped it
    before any ``optimizer.step()`` (torch's warning: the schedule's first rate is skipped)."""
    torch.manual_seed(0)
    model = TinyLM()
    opt = sgd(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    has, empty = _with_empty_batch()
    tr = Trainer(model, opt, scheduler=sched, tbptt_k1=k1, carry_state=False, progress=False)
    tr.fit([empty, has, empty, has])
    assert tr.step == 4 and sched.last_epoch == 2 and opt.param_groups[0]["lr"] == 0.5 * 0.5**2
