"""The training loop: any ``nn.Module`` + a loss, truncated BPTT, clipping, validation,
early stopping, NT-ASGD, callbacks, exact resume and DDP.

Read ``fit`` top to bottom: it is the whole loop. A batch is anything whose ``[0]`` is the
input and ``[1]`` the target (``LMBatch``, ``PaddedBatch``, a ``(x, y)`` tuple); pass
``step_fn(model, batch, state) -> (loss, new_state)`` for anything else.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from rnnkit.train import distributed as dist
from rnnkit.train.callbacks import Callback, default_callbacks
from rnnkit.train.checkpoint import latest_checkpoint, stale_latest
from rnnkit.train.config import TrainConfig, check_trainer_arguments
from rnnkit.train.historylog import HistoryLog
from rnnkit.train.hooks import end_callbacks
from rnnkit.train.ntasgd import NTASGD
from rnnkit.train.outdir import claim_out_dir, unlock_out_dir
from rnnkit.train.precision import MixedPrecision
from rnnkit.train.resume import TrainerCheckpoints
from rnnkit.train.seed import check_generators, data_generators, get_rng_state, seed_rank, set_rng_state
from rnnkit.train.state import is_nll_loss, lm_loss, move_to
from rnnkit.train.step import TrainerStep, _seq_len
from rnnkit.train.validation import TrainerValidation

__all__ = ["Trainer", "StepFn"]

StepFn = Callable[[nn.Module, Any, Any], tuple[Tensor, Any]]

log = logging.getLogger("rnnkit.train")


class Trainer(TrainerStep, TrainerCheckpoints, TrainerValidation):
    """``Trainer(model, optimizer, config, **overrides).fit(train_data, val_data)``.

    ``loss_fn(output, targets) -> scalar`` (default: token cross-entropy, ``-100``
    ignored). ``scheduler``: any LR scheduler, stepped once per step (not at a step without any
    target, which updates nothing), with ``scheduler_interval="epoch"`` once at each epoch's end
    instead, or with the validation loss if it is ``ReduceLROnPlateau``.
    ``overrides`` replace fields of ``config`` (e.g. ``Trainer(m, opt, max_steps=100)``). Under
    ``torchrun`` the model is wrapped in DDP (unless already) and only rank 0 logs and writes checkpoints.
    ``trainer.model`` is the module trained (the DDP wrapper under ``torchrun``),
    ``trainer.raw_model`` the bare model (evaluation, NT-ASGD averaging, checkpoints).
    ``generators``: the ``torch.Generator`` objects training draws from besides the global RNGs and
    the data's own (which it finds), e.g. a ``ScheduledSampler(generator=g)``'s: checkpoints hold
    their states, so a resumed run draws as the one that never stopped.
    ``perplexity``: whether the rows (and :meth:`evaluate`) have a ``ppl``, ``exp(loss)``, which is
    a perplexity only for a negative log-likelihood; ``None``: when ``loss_fn`` is known to be one
    (the default, a cross-entropy: :func:`~rnnkit.train.state.is_nll_loss`) and no ``step_fn``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig | None = None,
        *,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = lm_loss,
        scheduler: Any | None = None,
        step_fn: StepFn | None = None,
        callbacks: Iterable[Callback] = (),
        generators: Iterable[torch.Generator] = (),
        perplexity: bool | None = None,
        **overrides: Any,
    ) -> None:
        check_trainer_arguments(config, model, loss_fn, step_fn)
        self.config = cfg = replace(config or TrainConfig(), **overrides)
        if step_fn is not None and cfg.tbptt_k1 is not None:
            raise ValueError("tbptt_k1 splits batches for the default step; not with step_fn")
        self.raw_model = model  # the bare module: evaluation, averaging, checkpoints
        self.device = torch.device(cfg.device) if cfg.device is not None else _model_device(model)
        model.to(self.device)
        if dist.is_distributed() and not isinstance(model, DistributedDataParallel):
            ids = [self.device] if self.device.type == "cuda" else None
            # a step_fn runs as the forward of DDP's module, with the bare model (dist.StepFnModule)
            wrapped = dist.StepFnModule(model, step_fn) if step_fn is not None else model
            model = DistributedDataParallel(wrapped, device_ids=ids)
        if dist.is_distributed():  # the weights are built (alike): each rank its own dropout masks
            seed_rank(dist.get_rank())
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.loss_fn, self.step_fn = loss_fn, step_fn
        if perplexity is not None and not isinstance(perplexity, bool):  # (1, 0.0, np.True_ were taken)
            raise ValueError(f"perplexity must be a bool or None, got {perplexity!r}")
        # exp(loss) of an MSE was logged as a "ppl" (5e55 for a loss of 128): it means nothing there
        self.perplexity = is_nll_loss(loss_fn) and step_fn is None if perplexity is None else perplexity
        self.generators = check_generators(generators)
        self.is_main = dist.is_main_process()
        self.callbacks = list(callbacks) + (default_callbacks(cfg) if self.is_main else [])
        self.ntasgd = NTASGD(self.raw_model, cfg.nonmono) if cfg.nt_asgd else None
        self.precision = MixedPrecision(cfg.amp, self.device, self.raw_model)
        # Progress counters; all of them go into checkpoints.
        self.step = self.epoch = self.batch_in_epoch = self.tokens_seen = 0
        self.elapsed = 0.0
        self.best_val, self.bad_evals = math.inf, 0
        self.losses: list[float] = []  # training loss of every step (NaN: it had no target)
        self.history: list[dict[str, Any]] = []  # logged rows (train and val)
        self._history_log = HistoryLog()  # where checkpoints append the rows (historylog)
        self.state: Any = None  # the recurrent state carried between batches
        self.should_stop, self.stop_reason = False, None
        self._acc = [0.0, 0.0, 0]  # loss*tokens, tokens, steps since the last log
        self._rate: list[float] = [0.0, 0]  # tokens/s: since when, and the targets trained since (fit)
        self._epoch_rng: dict | None = None
        self._resume: dict | None = None
        self._loaded: Path | None = None  # the checkpoint load() read last
        self._last_saved = -1
        # the weights NT-ASGD's average replaced at the end of fit(): training goes on from them
        self._raw_weights: list[Tensor] | None = None

    # ------------------------------------------------------------------ setup
    @property
    def checkpoint_dir(self) -> Path | None:
        return Path(self.config.out_dir) / "checkpoints" if self.config.out_dir else None

    def expected_steps(self, data: Any = None) -> int | None:
        if self.config.max_steps is not None:
            return self.config.max_steps
        data = data if data is not None else getattr(self, "_train_data", None)
        try:
            return len(data) * self.config.max_epochs
        except TypeError:
            return None

    def _emit(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # ------------------------------------------------------------------ evaluation
    def _reduce_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    @property
    def step_epoch(self) -> int:
        """The epoch of the last step trained, which the rows name: ``epoch`` counts the epochs
        ended, one more once an epoch's last step is done (``validate_at_end`` runs then)."""
        return self.epoch - 1 if self.batch_in_epoch == 0 and self.epoch > 0 else self.epoch

    # ------------------------------------------------------------------ the loop
    def fit(self, train_data: Iterable[Any], val_data: Iterable[Any] | None = None) -> dict:
        """Train until ``max_epochs``/``max_steps``/``max_minutes``/early stopping.

        Returns ``{"step", "epoch", "best_val", "stop_reason", "history"}``; ``stop_reason``
        is ``"max_epochs"``, ``"max_steps"``, ``"max_minutes"``, ``"early_stopping"`` or, when a
        callback set ``should_stop`` without setting ``stop_reason``, ``"callback"``. With
        ``resume=True`` it first loads the latest checkpoint of ``out_dir`` and continues exactly
        where it was: same data position, RNG and state; without one it logs a warning (logger
        ``rnnkit.train``) and trains from the start. Rank 0 holds ``out_dir``'s lock meanwhile
        (:mod:`rnnkit.train.outdir`): another process training there raises ``OutDirInUse``; it
        first deletes the temporaries that killed checkpoint writes left there. ``val_every``,
        ``patience``, ``nt_asgd``, ``save_best`` and a ``ReduceLROnPlateau`` scheduler act on
        validations: without ``val_data`` they are a ``ValueError``, before anything is trained or
        written. ``validate_at_end``: a last step without a validation gets one, which counts
        toward ``save_best`` and ``patience`` as every validation does.
        """
        if val_data is None:  # they would silently never act
            self.config.check_unvalidated(self.scheduler)
        self.config.check_carried_order(train_data, self.step_fn)
        if val_data is not None:
            self.config.check_carried_order(val_data, self.step_fn, "validation data")
        # a checkpoint loaded from elsewhere starts this out_dir's run too: another run's there would mix
        new_run = (
            self.step == 0 and self._resume is None and not self.config.resume or self._loaded_elsewhere()
        )
        locked = claim_out_dir(self.config.out_dir, self._reduce_device(), new_run)
        try:
            return self._fit(train_data, val_data)
        finally:
            if locked:
                unlock_out_dir(self.config.out_dir)

    def _fit(self, train_data: Iterable[Any], val_data: Iterable[Any] | None) -> dict:
        cfg = self.config
        self._train_data = train_data
        elsewhere = self._loaded_elsewhere()
        auto = cfg.resume and self._resume is None  # trainer.load(ckpt) before fit(): that one goes on
        if auto and self.checkpoint_dir and latest_checkpoint(self.checkpoint_dir):
            self.load(self.checkpoint_dir)
        elif auto and self.is_main:  # a first run, or a mistyped out_dir: say which
            d = self.checkpoint_dir
            log.warning("resume=True: no checkpoint in %s%s; training from the start", d, stale_latest(d))
        if not auto and self._resume is not None:  # trainer.load(ckpt): out_dir's latest is ckpt
            self._name_loaded_latest()
        if self._resume is not None and self.is_main and not elsewhere:  # best/ is not of a later step
            self._drop_newer_best()
        if self._resume is None and self.batch_in_epoch:
            # A fit() of this trainer stopped inside an epoch (max_steps, max_minutes, a callback): go
            # on from there as a resume from its checkpoint would (the same epoch replayed to its
            # position, then the RNG and state as they are), not from the epoch's first batch again.
            self._resume = self._position(train_data)
        if self._raw_weights is not None:
            # The model holds the NT-ASGD average a fit() ended with: train on from the weights it
            # replaced, as a run that never stopped would (the average itself is in self.ntasgd).
            self._set_trainable(self._raw_weights)
            self._raw_weights = None
        self.should_stop, self.stop_reason = False, None
        if (self.step == 0 and self._resume is None or elsewhere) and self.is_main:
            self.clear_best()  # a new run: no best of another one (claim_out_dir refused their checkpoints)
        if cfg.patience is not None and self.bad_evals >= cfg.patience:
            # a resumed run that had stopped early stays stopped (its patience is spent)
            self.should_stop, self.stop_reason = True, "early_stopping"
        start = time.perf_counter() - self.elapsed  # the clock goes on from the checkpoint's
        self.raw_model.train()
        started: list[Callback] = []  # ended in the finally: what they opened closes on any error
        failure: BaseException | None = None
        try:
            if self.is_main:
                for cb in self.callbacks:
                    cb.on_fit_start(self)
                    started.append(cb)
            self._agree_stop()
            self._rate = [time.perf_counter(), 0]  # tokens/s' clock: validations, checkpoints _paused
            while not self.should_stop and self.epoch < cfg.max_epochs:
                # before pulling a batch: a resumed run that had used its budget stays finished
                if self._budget_spent():
                    break
                if hasattr(train_data, "set_epoch"):
                    train_data.set_epoch(self.epoch)
                elif hasattr(getattr(train_data, "batch_sampler", None), "set_epoch"):
                    train_data.batch_sampler.set_epoch(self.epoch)
                elif hasattr(getattr(train_data, "sampler", None), "set_epoch"):
                    train_data.sampler.set_epoch(self.epoch)
                batches = self._start_epoch(train_data)
                # under DDP, only while every rank has a batch (else all raise alike)
                agreed = dist.agreed_batches(batches, self.epoch, self.step + 1, self._reduce_device())
                ended = True  # the epoch trains its last batch (or a stop below says so)
                for batch in agreed:
                    batch = move_to(batch, self.device)
                    loss_sum, n, norm = self._train_batch(batch)
                    self.step, self.batch_in_epoch = self.step + 1, self.batch_in_epoch + 1
                    self.tokens_seen += int(n)
                    self._rate[1] += n
                    self.elapsed = time.perf_counter() - start
                    if cfg.max_minutes is not None:
                        # one clock for all ranks (the slowest's): each rank's own would stop
                        # them at different steps, leaving the others in the next collective
                        self.elapsed = dist.all_reduce_max(self.elapsed, self._reduce_device())
                    # after the counters: a schedule over the budget (the CLI's BudgetLR) reads the
                    # steps and time spent including this step, to set the next step's rate. A step that
                    # made no update (no target, a non-finite gradient, float16's skip) leaves it: the
                    # schedule follows the updates (torch's recipe; else torch warns of a scheduler step
                    # before any optimizer step)
                    if self._updates:
                        self._step_scheduler("step")
                    # a step without any target has no loss (NaN), not 0.0, which would pull averages
                    # and curves down; the log rows' token-weighted means leave it out (n = 0)
                    loss = loss_sum / n if n else math.nan
                    self.losses.append(loss)
                    self._acc = [self._acc[0] + loss_sum, self._acc[1] + n, self._acc[2] + 1]
                    if self.is_main:
                        info = {"step": self.step, "loss": loss, "tokens": int(n)}
                        self._emit("on_step_end", {**info, "seq_len": _seq_len(batch)})
                    if self.step % cfg.log_every == 0:
                        self._log(batch, norm)
                    with self._paused():
                        if val_data is not None and cfg.val_every and self.step % cfg.val_every == 0:
                            self._validate(val_data)
                        if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                            self.save()
                    self._agree_stop()
                    if (budget := self._budget_spent()) or self.should_stop:
                        # at the epoch's last batch a budget still ends the epoch, as without it
                        ended = budget and self._epoch_over(agreed, train_data)
                        break
                if ended:  # the epoch ran to its end
                    if self.batch_in_epoch == 0:
                        # (a resume at an epoch's end skips its batches, but counts them.) Without
                        # this, a step or time budget with many epochs would spin here forever.
                        raise ValueError(
                            f"the training data yielded no batches in epoch {self.epoch} (expected at "
                            "least one; e.g. a drop_last sampler with fewer items than batch_size)"
                        )
                    if val_data is not None and not cfg.val_every:
                        with self._paused():
                            self._validate(val_data)
                        self._agree_stop()  # its callbacks ran on rank 0 alone
                    self._step_scheduler("epoch")  # (a resume at the epoch's last step comes here too)
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    # a checkpoint of this step holds the epoch before its end (its validation, the
                    # counters): the final one is written again, or a relaunch replays the epoch
                    self._last_saved = None
            if self.stop_reason is None:
                # a callback set should_stop (Callback's documented way to stop) without a reason
                self.stop_reason = "callback" if self.should_stop else "max_epochs"
            last = next((r for r in reversed(self.history) if r["split"] == "val"), None)
            if cfg.validate_at_end and val_data is not None and (last is None or last["step"] != self.step):
                # (a resumed finished run has it in the checkpoint's history: not validated twice).
                # The RNG as before it: a DataLoader's iter() draws its seed, and a run resumed from
                # the final checkpoint goes on as one that never stopped (which had no such validation)
                gens = self._rng_generators(train_data) + data_generators(val_data)
                rng = get_rng_state(*gens)
                self._validate(val_data, at_end=True)
                set_rng_state(rng, *gens)
                self._last_saved = None  # the final checkpoint holds it (its best, bad_evals, row)
            averaged = self.ntasgd is not None and self.ntasgd.triggered
            if averaged:
                self._raw_weights = [p.detach().clone() for p in self._trainable()]
                self.ntasgd.apply()  # the averaged weights are the result (AWD-LSTM)
            # With NT-ASGD, always written after apply(), even at a step already saved: the final
            # checkpoint then loads to the model fit() returns, and it keeps the raw weights too.
            if self.checkpoint_dir is not None and (averaged or self._last_saved != self.step):
                self.save()
        except BaseException as e:
            failure = e  # the error to fix: the callbacks' errors in ending must not hide it
            raise
        finally:
            end_callbacks(self, started, failure)  # each one, also after another's raised
            # its traceback holds this frame: a cycle, the step's tensors kept until the cyclic GC
            failure = None
        return {
            "step": self.step,
            "epoch": self.epoch,
            "best_val": self.best_val,
            "stop_reason": self.stop_reason,
            "history": self.history,
        }

    def _agree_stop(self) -> None:
        """Under DDP, after callbacks ran (on rank 0 alone), what they may change, on every rank:
        ``should_stop`` once any rank set it (the others would wait for it in the next step's
        gradient all-reduce), with the first ``stop_reason`` of the ranks that have one, and rank
        0's learning rates (the others' weights would drift from its own). One all-reduce, a sum:
        the others add zeros to rank 0's rates, exact; the reason is gathered once, at the stop."""
        if not dist.is_distributed():
            return
        groups = self.optimizer.param_groups
        mine = [float(g["lr"]) if self.is_main else 0.0 for g in groups]
        stop, *lrs = dist.all_reduce_sum([float(self.should_stop), *mine], self._reduce_device())
        for g, lr in zip(groups, lrs, strict=True):
            if float(g["lr"]) != lr:  # a tensor rate (e.g. capturable Adam's) stays a tensor
                g["lr"] = g["lr"].fill_(lr) if isinstance(g["lr"], Tensor) else lr
        if stop > 0:
            reasons = dist.all_gather_object(self.stop_reason)
            self.should_stop, self.stop_reason = True, next((r for r in reasons if r is not None), None)

    def _budget_spent(self) -> bool:
        """Set ``should_stop`` and the reason once ``max_steps``/``max_minutes`` is reached.

        ``elapsed`` is the time trained so far, resumes included, and under DDP the value
        all ranks agreed on at the last step: every rank takes the same decision."""
        cfg = self.config
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            self.should_stop, self.stop_reason = True, "max_steps"
        elif cfg.max_minutes is not None and self.elapsed >= 60 * cfg.max_minutes:
            self.should_stop, self.stop_reason = True, "max_minutes"
        else:
            return False
        return True


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
