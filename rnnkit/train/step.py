"""A :class:`~rnnkit.train.Trainer`'s training step: the forward of one batch (the default
``model(inputs[, state])`` + ``loss_fn`` or a ``step_fn``, under mixed precision), the update
(backward, unscale, clip, optimizer step, NT-ASGD averaging) and a batch's whole step, in one
update or in truncated-BPTT windows, token-weighted across DDP ranks; and the training row logged
every ``log_every`` steps (``tokens_per_s`` with validations and checkpoint writes left out).
Kept apart from the loop in :mod:`rnnkit.train.trainer`, whose attributes it reads and sets (as
:mod:`rnnkit.train.resume`).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.train import distributed as dist
from rnnkit.train.state import check_carried_rows, count_tokens, detach_state, output_and_state
from rnnkit.train.tbptt import tbptt_batch, zero_loss

__all__ = ["TrainerStep"]

log = logging.getLogger("rnnkit.train")


class TrainerStep:
    """The step of :class:`~rnnkit.train.Trainer` (a base class of it)."""

    def _forward(self, model: nn.Module, batch: Any, state: Any, *, zero: bool = False) -> tuple[Tensor, Any]:
        """Loss (a scalar mean) and new state of one batch, with the configured protocol.

        ``zero=True`` (a batch without targets, whose mean loss is NaN): a zero loss instead, with
        zero, finite gradients for every parameter, this process's share of a DDP update."""
        if self.step_fn is not None:
            # under autocast, the loss and the carried state come back in float32 (as for the default step)
            if isinstance(getattr(model, "module", None), dist.StepFnModule):
                res = self.precision.call(model, batch, state)  # DDP: step_fn(bare model) inside
            else:
                res = self.precision.call(self.step_fn, model, batch, state)
            loss, state = output_and_state(res, "step_fn")
            if zero:
                # step_fn gives no output to build the zero on: the parameters themselves
                return zero_loss(self._trainable()), state
            # float32 for a half-precision (autocast) loss; a float64 one stays float64
            return (loss.float() if loss.dtype in (torch.float16, torch.bfloat16) else loss), state
        inputs, targets = batch[0], batch[1]
        if self.config.stateful:
            output, state = output_and_state(self.precision.call(model, inputs, state))
        else:
            output = self.precision.call(model, inputs)
        return (zero_loss(output) if zero else self.loss_fn(output, targets)), state

    def _step_scheduler(self, at: str) -> None:
        """Step the scheduler where its ``scheduler_interval`` is ``at`` (``"step"``: after a step
        that made an update; ``"epoch"``: at an epoch's end). A ``ReduceLROnPlateau`` steps with
        the validation loss alone (``_validate``)."""
        plateau = isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if self.scheduler is None or plateau or self.config.scheduler_interval != at:
            return
        with warnings.catch_warnings():
            if self.tokens_seen > 0:  # the run has updated, if not this process: a resume at an epoch's end
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()

    def _update(self, loss: Tensor, lr_scale: float) -> float:
        """Backward, clip, optimizer step; returns the gradient norm (before clipping)."""
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.precision.unscale_(self.optimizer)
        params = [p for p in self.raw_model.parameters() if p.grad is not None]
        # what clip_grad_norm_ does, but its norm has no sparse kernel (nn.Embedding(sparse=True)
        # failed every step): a sparse gradient's norm is its coalesced values' (repeated rows summed)
        grads = [p.grad.coalesce().values() if p.grad.is_sparse else p.grad for p in params]
        total = torch.nn.utils.get_total_norm(grads)
        if cfg.clip_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.clip_norm, total)
        # (else measured only: clip_grad_norm_(max_norm=inf) would scale every gradient by inf / norm,
        # NaN for an inf norm, spreading one inf gradient to all weights)
        norm = float(total)
        if not math.isfinite(norm) and self.precision.scaler is None:
            # an inf/NaN gradient would make weights (and, through clipping, all of them) NaN for
            # the rest of the run: skip the update, as the float16 loss scaler does. Under DDP the
            # gradients are all-reduced, so every rank skips alike. (The scaler must see its
            # skipped steps to lower its scale, so float16 steps go to it.) Rank 0 alone logs it, as
            # every log: the others skip the same step, and N copies of the warning would say nothing more
            if self.is_main:
                log.warning("step %d: gradient norm %s; update skipped", self.step + 1, norm)
            return norm
        if cfg.clip_value is not None:
            _clip_grads_by_value(params, cfg.clip_value)
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        if lr_scale != 1.0:  # AWD-LSTM: longer windows get a proportionally larger step
            for g in self.optimizer.param_groups:
                g["lr"] = g["lr"] * lr_scale
        stepped = self.precision.step(self.optimizer)
        self._updates += int(stepped)  # (the scheduler steps after a batch that made an update)
        for g, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            g["lr"] = lr
        if self.ntasgd is not None and stepped:
            # a step the loss scaler skipped left the weights as they were: counting them again
            # would weigh them twice in the average
            self.ntasgd.update()
        return norm

    def _train_batch(self, batch: Any) -> tuple[float, float, float]:
        """One batch: returns (summed loss * tokens, tokens) over all ranks, and the grad norm."""
        cfg = self.config
        self._updates = 0  # optimizer steps taken (none: no target, a non-finite gradient, fp16's skip)
        lr_scale = float(getattr(batch, "lr_scale", 1.0)) if cfg.scale_lr_by_seq_len else 1.0
        state = self.state if cfg.carry_state else None
        rows = getattr(self, "_state_rows", None) if state is not None else None
        where = f"batch {self.batch_in_epoch + 1} of the epoch"
        self._state_rows = check_carried_rows(batch, rows, cfg.batch_first, where)
        time_dim = 1 if cfg.batch_first else 0
        k1 = cfg.tbptt_k1
        dev = self._reduce_device()
        if k1 is not None and dist.is_distributed():
            self._check_tbptt_updates_agree(batch[0].shape[time_dim], k1, dev)
        if k1 is None or batch[0].shape[time_dim] <= k1:  # the common, simple path
            n = count_tokens(batch)
            # without a target here the mean loss is NaN (a mean over nothing): never backpropagated
            loss, state = self._forward(self.model, batch, state, zero=n == 0)
            self.state = detach_state(state)
            loss_sum, total = (float(loss.detach()) * n if n else 0.0), float(n)
            if dist.is_distributed():
                # DDP averages the ranks' gradients, each of its rank's *mean* loss. With batches of
                # unequal token counts (padded sequences) a rank's mean weighs n W / N (its n of the
                # step's N tokens, W ranks), so the update is that of the token-weighted mean over
                # the global batch, as in one process. The step's sums are needed before backward.
                loss_sum, total = dist.all_reduce_sum([loss_sum, n], dev)
                if n:
                    w = n * dist.get_world_size() / total
                    loss = loss if w == 1.0 else loss * w
                # with n == 0 the loss is already the zero that joins the others' all-reduce
            if total == 0:
                # no target on any rank: no update (all ranks alike, so no collective is left
                # unmatched); a step with zero gradients would still move the weights (momentum,
                # Adam, weight decay)
                return 0.0, 0.0, 0.0
            return loss_sum, total, self._update(loss, lr_scale)
        reduce = (lambda n: dist.all_reduce_sum([n], dev)[0]) if dist.is_distributed() else None
        loss_sum, n, norm, self.state = tbptt_batch(
            lambda *args: self.precision.call(self.model, *args), self.loss_fn,
            lambda loss: self._update(loss, lr_scale), batch[0], batch[1], state, k1, cfg.tbptt_k2, time_dim,
            global_count=reduce, padded=isinstance(getattr(batch, "lengths", None), Tensor),
        )  # fmt: skip
        loss_sum, n = dist.all_reduce_sum([loss_sum, n], dev)
        return loss_sum, n, norm

    def _check_tbptt_updates_agree(self, length: int, k1: int, dev: torch.device | None) -> None:
        """Under DDP every TBPTT window is an all-reduce of its target count and, unless no rank
        has a target in it, a gradient all-reduce on every rank (the one-window path: the loss sums,
        then the update unless the batch has no target anywhere), so all ranks must cut a step into
        the same number of windows, or they wait in collectives that do not match: a hang, or a
        crash. As the ranks skip the same windows, they then make the same number of updates.
        Padded batches have each rank's own longest length. Every rank raises alike."""
        n = 1 if length <= k1 else math.ceil(length / k1)
        most, fewest = dist.all_reduce_max(n, dev), -dist.all_reduce_max(-n, dev)
        if most != fewest:
            raise dist.on_every_rank(
                ValueError(
                    f"tbptt_k1={k1} under DDP: the ranks' batches of step {self.step + 1} split into "
                    f"{int(fewest)} to {int(most)} TBPTT updates (this rank: time length {length}, {n}); "
                    "every rank must make the same number: give the ranks batches of one time length "
                    "(pad them to a common length; bptt_batches windows have one)"
                )
            )

    @contextmanager
    def _paused(self) -> Iterator[None]:
        """The time spent inside (validation, checkpoint writes) is left out of ``tokens_per_s``."""
        t0 = time.perf_counter()
        yield
        self._rate[0] += time.perf_counter() - t0

    def _log(self, batch: Any, norm: float) -> None:
        now = time.perf_counter()
        loss_sum, n, steps = self._acc
        mean = loss_sum / n if n else math.nan  # no step of the interval had a target
        since, trained = self._rate  # (the interval's steps of this fit() only: _acc holds a resume's too)
        row = {
            "split": "train",
            "step": self.step,
            "epoch": self.epoch,
            "loss": mean,
            **({"ppl": math.exp(min(mean, 700.0))} if self.perplexity else {}),  # an NLL's alone
            # a tensor rate (Adam(lr=torch.tensor(...)), capturable optimizers) failed metrics.jsonl
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "tokens_per_s": trained / max(now - since, 1e-9),
            "grad_norm": norm,
            "seq_len": _seq_len(batch),
            "elapsed_s": self.elapsed,
        }
        self.history.append(row)
        self._acc = [0.0, 0.0, 0]
        if self.is_main:
            self._emit("on_log", row)
        self._rate = [now, 0]


def _clip_grads_by_value(params: list[nn.Parameter], clip: float) -> None:
    """``clip_grad_value_`` of ``params`` (every one with a gradient), sparse gradients too: its clamp
    has no sparse kernel (nn.Embedding(sparse=True) failed every step). A sparse gradient is
    coalesced first, its repeated rows (a token seen twice) summed as in its dense twin, then its
    values clamped: the dense twin's clipped gradient."""
    dense = [p for p in params if not p.grad.is_sparse]
    if dense:  # (torch refuses an empty list)
        torch.nn.utils.clip_grad_value_(dense, clip)
    for p in params:
        if p.grad.is_sparse:
            grad = p.grad.coalesce()
            grad.values().clamp_(-clip, clip)  # (a coalesced tensor's values() is its own storage)
            p.grad = grad


def _seq_len(batch: Any) -> int | None:
    n = getattr(batch, "seq_len", None)
    return int(n) if n is not None else None
