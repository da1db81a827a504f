"""Teacher forcing / scheduled sampling schedules and the unroll helper."""

import math

import numpy as np
import pytest
import torch

from rnnkit.train import ScheduledSampler, TeacherForcingSchedule, autoregressive_unroll


def test_schedules():
    assert TeacherForcingSchedule("constant", p=0.7)(12345) == 0.7
    lin = TeacherForcingSchedule("linear", start=1.0, end=0.2, steps=100)
    assert [lin(i) for i in (0, 50, 100, 1000)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    exp = TeacherForcingSchedule("exponential", k=0.9)
    assert exp(0) == 1.0 and exp(10) == pytest.approx(0.9**10)
    floored = TeacherForcingSchedule("exponential", k=0.5, end=0.2)  # max(end, k^i)
    assert [floored(i) for i in (0, 2, 3, 50)] == pytest.approx([1.0, 0.25, 0.2, 0.2])
    inv = TeacherForcingSchedule("inverse_sigmoid", k=10)
    assert inv(0) == pytest.approx(10 / 11) and inv(50) == pytest.approx(10 / (10 + math.e**5))
    vals = [inv(i) for i in range(0, 200, 10)]
    assert all(a > b for a, b in zip(vals, vals[1:], strict=False)) and inv(10**9) == 0.0


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"kind": "cosine"}, "kind must be one of"),
        ({"kind": "inverse_sigmoid", "k": 0.5}, "k >= 1, got k=0.5"),
        # were accepted: every probability NaN (inf / (inf + 1))
        ({"kind": "inverse_sigmoid", "k": math.inf}, "finite k >= 1, got k=inf"),
        ({"kind": "inverse_sigmoid", "k": math.nan}, "finite k >= 1, got k=nan"),
        ({"kind": "exponential", "k": 1.5}, "0 < k < 1, got k=1.5"),
        ({"p": 1.5}, "p must be in \\[0, 1\\], got 1.5"),
        # was accepted and gave `end` at every step (max(end, ...)), never `start`
        ({"kind": "linear", "start": 0.2, "end": 0.9}, "needs start >= end, got 0.2 < 0.9"),
    ],
)
def test_schedule_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        TeacherForcingSchedule(**kw)


def test_sampler_mixes_per_example():
    gt, pred = torch.zeros(4000, dtype=torch.long), torch.ones(4000, dtype=torch.long)
    assert torch.equal(ScheduledSampler(1.0).choose(0, gt, pred), gt)
    assert torch.equal(ScheduledSampler(0.0).choose(0, gt, pred), pred)
    s = ScheduledSampler(
        TeacherForcingSchedule("linear", steps=10), generator=torch.Generator().manual_seed(0)
    )
    frac_gt = (s.choose(3, gt, pred) == 0).float().mean().item()  # p = 0.7
    assert frac_gt == pytest.approx(0.7, abs=0.03)
    whole = ScheduledSampler(0.5, per_example=False, generator=torch.Generator().manual_seed(1))
    out = whole.choose(0, gt[:8], pred[:8])
    assert out.unique().numel() == 1  # one coin for the batch
    with pytest.raises(ValueError, match="shape"):
        s.choose(0, gt[:3], pred[:4])


@pytest.mark.parametrize("p", [1.5, -0.2, math.nan])
def test_sampler_refuses_a_schedule_value_that_is_no_probability(p):
    """A callable schedule's value was used unchecked: above 1 fed the truth, below 0 or NaN the
    predictions (every coin ``rand < nan`` fails), silently."""
    gt, pred = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    s = ScheduledSampler(lambda i: p)
    with pytest.raises(ValueError, match=rf"the schedule gave P\(truth\) = {p} at step 3, not a probability"):
        s.choose(3, gt, pred)


def test_sampler_takes_numpy_numbers_and_refuses_what_is_neither_number_nor_callable():
    """np.float32(0.0) is no Python float: it was taken for a callable schedule and failed at the
    first step ("'numpy.float32' object is not callable"), as a string did."""
    gt, pred = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert torch.equal(ScheduledSampler(np.float32(0.0)).choose(0, gt, pred), pred)
    assert torch.equal(ScheduledSampler(np.int64(1)).choose(0, gt, pred), gt)
    with pytest.raises(ValueError, match="p must be in"):
        ScheduledSampler(np.float32(2.0))
    with pytest.raises(TypeError, match="schedule must be a number in \\[0, 1\\] or a callable"):
        ScheduledSampler("0.5")


def test_autoregressive_unroll():
    torch.manual_seed(0)
    emb, cell, head = torch.nn.Embedding(5, 4), torch.nn.GRUCell(4, 4), torch.nn.Linear(4, 5)
    inputs_seen = []

    def step_fn(x, h):
        inputs_seen.append(x.clone())
        h = cell(emb(x), h)
        return head(h), h

    bos = torch.zeros(2, dtype=torch.long)
    targets = torch.tensor([[1, 2], [3, 4], [2, 1]])  # (T, B)
    logits, h = autoregressive_unroll(step_fn, bos, targets)
    assert logits.shape == (3, 2, 5) and h.shape == (2, 4)
    assert [x.tolist() for x in inputs_seen] == [[0, 0], [1, 2], [3, 4]]  # teacher forcing
    inputs_seen.clear()
    logits, _ = autoregressive_unroll(
        step_fn, bos, targets.t(), sampler=ScheduledSampler(0.0), batch_first=True
    )
    assert logits.shape == (2, 3, 5)
    assert torch.equal(inputs_seen[1], logits[:, 0].argmax(-1))  # own prediction fed back
    logits.sum().backward()  # differentiable through the logits


@pytest.mark.parametrize("batch_first", [False, True])
def test_autoregressive_unroll_checks_shapes(batch_first):
    """T=0 failed inside torch.stack ("stack expects a non-empty TensorList"); with T=1 a first
    input of another batch was never compared with the targets (with T>1 only by the sampler,
    after the first step). Now clear errors: the logits' V is only known from a step, so zero
    steps is one."""
    cell, head = torch.nn.GRUCell(1, 3), torch.nn.Linear(3, 2)

    def step_fn(x, h):
        h = cell(x.unsqueeze(-1).to(head.weight.dtype), h)
        return head(h), h

    def unroll(first, tgt):
        return autoregressive_unroll(step_fn, first, tgt.t() if batch_first else tgt, batch_first=batch_first)

    bos = torch.zeros(2, dtype=torch.long)
    empty = r"\(2, 0\)" if batch_first else r"\(0, 2\)"  # the shape as given
    with pytest.raises(ValueError, match=rf"at least one time step.*{empty}"):
        unroll(bos, torch.zeros(0, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"first_input of shape \(3,\).*one step of targets: \(2,\)"):
        unroll(torch.zeros(3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must be \(T, B, \*\) or \(B, T, \*\)"):
        autoregressive_unroll(step_fn, bos, torch.zeros(2, dtype=torch.long))
    logits, h = unroll(bos, torch.zeros(1, 2, dtype=torch.long))
    assert logits.shape == ((2, 1, 2) if batch_first else (1, 2, 2)) and h.shape == (2, 3)


def test_autoregressive_unroll_asks_the_sampler_at_the_training_step():
    """The probability of the ground truth is that of the training ``step`` (the schedule's
    argument), the same for every decoding step ``t`` of the unroll."""
    asked = []
    sampler = ScheduledSampler(lambda i: asked.append(i) or 1.0)
    cell, head = torch.nn.GRUCell(1, 3), torch.nn.Linear(3, 2)

    def step_fn(x, h):
        h = cell(x.unsqueeze(-1).to(head.weight.dtype), h)
        return head(h), h

    targets = torch.zeros(4, 2, dtype=torch.long)
    autoregressive_unroll(step_fn, torch.zeros(2, dtype=torch.long), targets, sampler=sampler, step=7)
    assert asked == [7, 7, 7]  # one choice per input after the first


def test_autoregressive_unroll_checks_its_arguments_types():
    """batch_first='no' (true) swapped time and batch where the shapes allowed it, silently; a
    None first_input or targets failed on a missing attribute."""

    def step_fn(x, h):
        return torch.zeros(3, 5), h

    bos, targets = torch.zeros(3, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long)
    with pytest.raises(TypeError, match="batch_first should be of type bool, got: str"):
        autoregressive_unroll(step_fn, bos, targets, batch_first="no")
    with pytest.raises(TypeError, match="targets must be a torch.Tensor, got NoneType"):
        autoregressive_unroll(step_fn, bos, None)
    with pytest.raises(TypeError, match="first_input must be a torch.Tensor, got list"):
        autoregressive_unroll(step_fn, [0, 0, 0], targets)
