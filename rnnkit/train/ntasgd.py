"""NT-ASGD: non-monotonically triggered averaging (Merity et al., 2018, AWD-LSTM).

Training runs with the given optimizer (SGD in the paper). At each validation, if the
loss is worse than the best of all but the last ``nonmono`` validations, averaging is
triggered. From then on the average is the mean of the weights at the trigger and after
every optimizer step since (``n_averaged + 1`` points): ``sum_{i=T..k} w_i / (k - T + 1)``,
what Algorithm 1 of the paper returns. Validation uses the averaged weights, and they
replace the weights at the end. It is kept without swapping the optimizer object, so it
composes with any optimizer, scheduler and checkpoint. AWD-LSTM's code switches to
``torch.optim.ASGD(t0=0, lambd=0)`` instead, whose average leaves out the weights at the
switch and (its ``mu`` is 1 for two steps) those after the first step too: the mean of the
weights after steps 2..k of the switched optimizer.

The average of a float16/bfloat16 parameter is kept in float32 (in low precision the running
mean stalls after a few dozen steps) and rounded to the parameter's dtype where it is copied in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from rnnkit import _checks
from rnnkit.train import distributed as dist

__all__ = ["NTASGD"]

log = logging.getLogger("rnnkit.train")


def _average_dtype(p: torch.Tensor) -> torch.dtype:
    """The dtype of ``p``'s running mean: float32 for a float16/bfloat16 parameter, whose 8 or 11
    bits of mantissa would stall the mean (an update's share ``1 / (n + 1)`` of the difference
    falls below the rounding step after a few dozen steps); ``p``'s own otherwise."""
    return torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype


class NTASGD:
    def __init__(self, model: nn.Module, nonmono: int = 5) -> None:
        # as TrainConfig's: a float (2.5) or a str was taken here and failed at a later validation,
        # mid-run, slicing the history ("slice indices must be integers")
        if not _checks.is_int(nonmono) or nonmono < 1:
            raise ValueError(f"nonmono must be an int >= 1, got {nonmono!r}")
        if not isinstance(model, nn.Module):  # (else "'NoneType' object has no attribute 'parameters'")
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.nonmono = int(nonmono)
        self.history: list[float] = []
        self.triggered_at: int | None = None  # training step of the trigger
        self.n_averaged = 0
        self.averages: list[torch.Tensor] = []

    @property
    def triggered(self) -> bool:
        return self.triggered_at is not None

    def observe(self, val_loss: float, step: int) -> bool:
        """Record a validation loss; returns True when this one triggers averaging."""
        fire = (
            not self.triggered
            and len(self.history) > self.nonmono
            and val_loss > min(self.history[: -self.nonmono])
        )
        self.history.append(float(val_loss))
        if fire:
            self.triggered_at = step
            self.n_averaged = 0
            self.averages = [p.detach().to(_average_dtype(p), copy=True) for p in self.params]
        return fire

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights into the running mean (call after each optimizer step taken,
        not after one a float16 loss scaler skipped: the weights did not move)."""
        if not self.triggered:
            return
        self.n_averaged += 1
        for avg, p in zip(self.averages, self.params, strict=True):
            avg.add_(p.detach().to(avg.dtype) - avg, alpha=1.0 / (self.n_averaged + 1))

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Temporarily put the averaged weights into the model (for evaluation); before the
        trigger there are none, and the model's own weights are used."""
        if not self.triggered:
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, avg in zip(self.params, self.averages, strict=True):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved, strict=True):
                    p.copy_(s)

    @torch.no_grad()
    def apply(self) -> None:
        """Copy the averaged weights into the model for good (end of training). Before the
        trigger nothing has been averaged: the model's weights are the result, as in
        :meth:`swapped`, and are left as they are."""
        if not self.triggered:
            return
        for p, avg in zip(self.params, self.averages, strict=True):
            p.copy_(avg)

    def state_dict(self) -> dict[str, Any]:
        return {
            "nonmono": self.nonmono,
            "history": list(self.history),
            "triggered_at": self.triggered_at,
            "n_averaged": self.n_averaged,
            "averages": list(self.averages),
        }

    def check_state(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` where :meth:`load_state_dict` refuses ``state``, changing nothing (a
        resume checks it before the model and optimizer load)."""
        averages, triggered_at = list(state["averages"]), state["triggered_at"]
        if triggered_at is None and averages:
            raise ValueError(f"NT-ASGD state is not triggered but holds {len(averages)} averaged tensors")
        if triggered_at is not None and not averages:
            raise ValueError(f"NT-ASGD state was triggered at step {triggered_at} but holds no averages")
        if len(averages) not in (0, len(self.params)):
            raise ValueError(
                f"NT-ASGD state has {len(averages)} averaged tensors, "
                f"the model has {len(self.params)} trainable parameters"
            )
        for i, (a, p) in enumerate(zip(averages, self.params[: len(averages)], strict=True)):
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(
                    f"NT-ASGD state does not fit the model: averaged tensor {i} has shape "
                    f"{tuple(a.shape)}, the parameter {tuple(p.shape)}"
                )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output. Checked against this model before anything
        changes: one averaged tensor of each trainable parameter's shape once triggered (a
        checkpoint of another model would otherwise load and break :meth:`apply`), none before.

        ``nonmono`` stays this object's (the run's configuration decides it, as for every other
        setting of a resumed run); a saved one that differs while averaging has not triggered yet
        (where it still matters) is logged as a warning: the resumed run triggers on another rule
        than the run it continues (under DDP by rank 0 alone)."""
        self.check_state(state)
        averages, triggered_at = list(state["averages"]), state["triggered_at"]
        saved = state.get("nonmono", self.nonmono)
        if saved != self.nonmono and triggered_at is None and dist.is_main_process():
            log.warning(
                "NT-ASGD: the checkpoint was made with nonmono=%s, resuming with nonmono=%s (the "
                "configured value is used; set it to %s to continue the run as it was)",
                saved, self.nonmono, saved,
            )  # fmt: skip
        self.history = list(state["history"])
        self.triggered_at = triggered_at
        self.n_averaged = state["n_averaged"]
        self.averages = [  # a checkpoint from before float32 averages of half parameters too
            a.to(device=p.device, dtype=_average_dtype(p))
            for a, p in zip(averages, self.params[: len(averages)], strict=True)
        ]
