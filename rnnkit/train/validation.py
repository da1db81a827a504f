"""A :class:`~rnnkit.train.Trainer`'s validation: :meth:`~TrainerValidation.evaluate` (the
token-weighted mean loss over a validation set, NT-ASGD's average swapped in, summed over DDP
ranks), its history row, and what acts on it (NT-ASGD's trigger, a ``ReduceLROnPlateau``, the best
weights, early stopping). Kept apart from the loop in :mod:`rnnkit.train.trainer`, whose
attributes it reads and sets (as :mod:`rnnkit.train.step` and :mod:`rnnkit.train.resume`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch

from rnnkit.train import distributed as dist
from rnnkit.train.evaluate import evaluate_batches

__all__ = ["TrainerValidation"]


class TrainerValidation:
    """The validation of :class:`~rnnkit.train.Trainer` (a base class of it)."""

    @torch.no_grad()
    def evaluate(self, data: Iterable[Any]) -> dict[str, float]:
        """Token-weighted mean loss over ``data`` (NT-ASGD averages swapped in), summed
        over ranks. Returns ``{"loss", "ppl", "tokens"}`` (``"ppl"`` with ``perplexity``). The state is
        carried across batches when ``carry_state`` (evaluate LM streams in order)."""
        with self.ntasgd.swapped() if self.ntasgd else nullcontext():
            total, tokens = evaluate_batches(
                self.raw_model, data, lambda m, batch, st: self._forward(m, batch, st),
                carry_state=self.config.carry_state, device=self.device, batch_first=self.config.batch_first,
            )  # fmt: skip
        total, tokens = dist.all_reduce_sum([total, tokens], self._reduce_device())
        if tokens == 0:
            raise dist.on_every_rank(ValueError("evaluate() got no target (no batches, or all targets -100)"))
        mean = total / tokens
        ppl = {"ppl": math.exp(min(mean, 700.0))} if self.perplexity else {}
        return {"loss": mean, **ppl, "tokens": tokens}

    def validation_row(self, res: dict[str, float]) -> dict[str, Any]:
        """The history/metrics row of :meth:`evaluate`'s ``res`` at the current step."""
        ppl = {"ppl": res["ppl"]} if self.perplexity and "ppl" in res else {}
        return {"split": "val", "step": self.step, "epoch": self.step_epoch, "loss": res["loss"], **ppl}

    def _validate(self, val_data: Iterable[Any], at_end: bool = False) -> None:
        """A validation row, and what acts on it: NT-ASGD's trigger and a ``ReduceLROnPlateau``
        (not ``at_end``: they change training, which a run resumed with a larger budget would do
        otherwise than one that never stopped), the best (``save_best``) and ``patience``."""
        cfg = self.config
        res = self.evaluate(val_data)
        row = self.validation_row(res)
        self.history.append(row)
        if not at_end and self.ntasgd is not None and self.ntasgd.observe(res["loss"], self.step):
            row["nt_asgd_triggered"] = True
        if not at_end and isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(res["loss"])
        if res["loss"] < self.best_val - cfg.min_delta:
            self.best_val, self.bad_evals = res["loss"], 0
            if cfg.save_best and self.is_main:
                self.save_best(res["loss"])
        else:
            self.bad_evals += 1
            if cfg.patience is not None and self.bad_evals >= cfg.patience and not at_end:
                # (at the end the run stopped for its own reason; a resume finds the patience spent)
                self.should_stop, self.stop_reason = True, "early_stopping"
        if self.is_main:
            self._emit("on_validation_end", row)
