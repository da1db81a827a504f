"""Teacher forcing and scheduled sampling (Bengio et al., 2015).

An autoregressive decoder is fed, at step ``t``, either the ground-truth token ``y[t-1]``
(teacher forcing) or its own previous prediction. Scheduled sampling starts with
mostly ground truth and moves towards the model's own predictions: at training step
``i`` the ground truth is used with probability ``eps(i)``, where ``eps`` decays

* ``constant``:         ``eps(i) = p``
* ``linear``:           ``eps(i) = max(end, start - (start - end) * i / steps)``
* ``exponential``:      ``eps(i) = max(end, k ** i)``                        (k < 1)
* ``inverse_sigmoid``:  ``eps(i) = k / (k + exp(i / k))``                    (k >= 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from rnnkit._checks import is_real

__all__ = ["TeacherForcingSchedule", "ScheduledSampler", "autoregressive_unroll"]

Kind = Literal["constant", "linear", "exponential", "inverse_sigmoid"]


class TeacherForcingSchedule:
    """Probability of feeding the ground truth at training step ``i``: ``schedule(i)``.

    * ``"constant"``: ``p``.
    * ``"linear"``: ``max(end, start - (start - end) i / steps)``, a decay from ``start`` to
      ``end`` (so ``start >= end``, else a ``ValueError``).
    * ``"exponential"``: ``max(end, k^i)``, ``0 < k < 1`` (default 0.999).
    * ``"inverse_sigmoid"``: ``k / (k + exp(i / k))``, finite ``k >= 1`` (default 1000).
    """

    def __init__(
        self,
        kind: Kind = "constant",
        *,
        p: float = 1.0,
        start: float = 1.0,
        end: float = 0.0,
        steps: int = 10_000,
        k: float | None = None,
    ) -> None:
        if kind not in ("constant", "linear", "exponential", "inverse_sigmoid"):
            raise ValueError(
                f"kind must be one of 'constant', 'linear', 'exponential', 'inverse_sigmoid', got {kind!r}"
            )
        for name, v in (("p", p), ("start", start), ("end", end)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if kind == "linear" and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if kind == "linear" and start < end:
            # max(end, ...) would hold the floor `end` from step 0: not a ramp from `start`
            raise ValueError(f"a linear schedule decays: needs start >= end, got {start} < {end}")
        if kind == "exponential":
            k = 0.999 if k is None else k
            if not 0.0 < k < 1.0:
                raise ValueError(f"exponential schedule needs 0 < k < 1, got k={k}")
        if kind == "inverse_sigmoid":
            k = 1000.0 if k is None else k
            if not (math.isfinite(k) and k >= 1.0):  # inf or nan: every probability NaN
                raise ValueError(f"inverse_sigmoid schedule needs a finite k >= 1, got k={k}")
        self.kind, self.p, self.start, self.end, self.steps, self.k = kind, p, start, end, steps, k

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.kind == "constant":
            return self.p
        if self.kind == "linear":
            return max(self.end, self.start - (self.start - self.end) * step / self.steps)
        if self.kind == "exponential":
            return max(self.end, self.k**step)
        # inverse sigmoid; exp overflows past ~709, where the value is 0 anyway
        x = step / self.k
        return 0.0 if x > 700 else self.k / (self.k + math.exp(x))

    def __repr__(self) -> str:
        return f"TeacherForcingSchedule({self.kind!r}, p={self.p}, k={self.k})"


class ScheduledSampler:
    """Decides, per decoding step, between ground truth and the model's prediction.

    ``schedule``: a :class:`TeacherForcingSchedule`, any ``step -> probability`` callable
    (a value outside ``[0, 1]`` or NaN is an error when asked), or a number (constant, numpy's
    too). ``per_example=True`` flips one coin per sequence in the batch (Bengio et al.);
    ``False`` one coin for the whole batch. The coins come from ``generator``, else the global RNG;
    a trainer saves its own generator's state only when given it: ``Trainer(..., generators=[g])``.
    """

    def __init__(
        self,
        schedule: Callable[[int], float] | float = 1.0,
        *,
        per_example: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if is_real(schedule):  # numpy's float32 too (it is no Python float: it was called, and failed)
            schedule = TeacherForcingSchedule("constant", p=float(schedule))
        elif not callable(schedule):
            raise TypeError(
                f"schedule must be a number in [0, 1] or a callable step -> probability, got {schedule!r}"
            )
        self.schedule, self.per_example, self.generator = schedule, per_example, generator

    def probability(self, step: int) -> float:
        """P(ground truth) at training ``step``, checked: ``choose`` reads > 1 as 1 and < 0 as 0,
        and NaN as 0 (every coin fails), so a broken schedule trained another model silently."""
        p = float(self.schedule(step))
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"the schedule gave P(truth) = {p} at step {step}, not a probability in [0, 1]")
        return p

    def choose(self, step: int, ground_truth: Tensor, prediction: Tensor) -> Tensor:
        """``ground_truth``/``prediction``: ``(B, *)``; returns the ``(B, *)`` next input."""
        if ground_truth.shape != prediction.shape:
            raise ValueError(
                f"ground_truth shape {tuple(ground_truth.shape)} != prediction shape "
                f"{tuple(prediction.shape)}"
            )
        p = self.probability(step)
        if p >= 1.0:
            return ground_truth
        if p <= 0.0:
            return prediction
        n = ground_truth.shape[0] if self.per_example and ground_truth.dim() > 0 else 1
        coins = torch.rand(n, generator=self.generator).to(ground_truth.device) < p
        mask = coins.view(-1, *([1] * (ground_truth.dim() - 1))) if ground_truth.dim() else coins[0]
        return torch.where(mask, ground_truth, prediction)


def autoregressive_unroll(
    step_fn: Callable[[Tensor, Any], tuple[Tensor, Any]],
    first_input: Tensor,
    targets: Tensor,
    state: Any = None,
    *,
    sampler: ScheduledSampler | None = None,
    step: int = 0,
    to_input: Callable[[Tensor], Tensor] | None = None,
    batch_first: bool = False,
) -> tuple[Tensor, Any]:
    """Run a one-step decoder over ``targets`` with teacher forcing / scheduled sampling.

    ``step_fn(x_t, state) -> (logits_t, state)`` with ``x_t``: ``(B, *)`` and
    ``logits_t``: ``(B, V)``. ``first_input``: ``(B, *)`` (e.g. BOS tokens).
    ``targets``: ``(T, B, *)`` or ``(B, T, *)``. Input ``t > 0`` is ``targets[t-1]`` or
    ``to_input(logits_{t-1})`` (default: argmax) as ``sampler`` decides at training
    ``step``. ``to_input`` gets the logits detached, whatever it is: no gradient flows through
    a fed-back prediction (Bengio et al. 2015; a continuous ``to_input`` too); no sampler = full teacher
    forcing. Returns logits ``(T, B, V)`` / ``(B, T, V)`` and the final state.
    ``T >= 1`` (the logits' ``V`` is only known from a step) and ``first_input`` must be
    shaped like one step of ``targets``: errors naming both shapes otherwise.
    """
    sampler = sampler or ScheduledSampler(1.0)
    to_input = to_input or (lambda logits: logits.argmax(-1))
    if not isinstance(batch_first, bool):  # as the losses' (a true string swapped time and batch, silently)
        raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
    for name, v in (("first_input", first_input), ("targets", targets)):
        if not isinstance(v, Tensor):  # (failed on a missing .dim or .shape)
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if targets.dim() < 2:
        raise ValueError(f"targets must be (T, B, *) or (B, T, *), got shape {tuple(targets.shape)}")
    tgt = targets.transpose(0, 1) if batch_first else targets
    if tgt.shape[0] == 0:  # else torch.stack's "non-empty TensorList"
        raise ValueError(f"targets must have at least one time step, got shape {tuple(targets.shape)}")
    if first_input.shape != tgt.shape[1:]:  # later inputs are targets' steps (B, *)
        raise ValueError(
            f"first_input of shape {tuple(first_input.shape)} must be shaped like one step of "
            f"targets: {tuple(tgt.shape[1:])} (targets {tuple(targets.shape)}, batch_first={batch_first})"
        )
    x, outs = first_input, []
    for t in range(tgt.shape[0]):
        logits, state = step_fn(x, state)
        outs.append(logits)
        if t + 1 < tgt.shape[0]:
            x = sampler.choose(step, tgt[t], to_input(logits.detach()).to(tgt.dtype))
    out = torch.stack(outs, dim=1 if batch_first else 0)
    return out, state
