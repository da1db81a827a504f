"""TrainConfig: every knob of the training loop, JSON-serializable (stored in checkpoints)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from rnnkit import _checks
from rnnkit.train.precision import check_amp

__all__ = ["TrainConfig", "STEP_FIELDS", "FREE_FIELDS"]

#: The settings that change what a training step computes: the state carried and its layout, the
#: TBPTT splits, the clipping, the precision, the rates' scaling and schedule, the averaging, and
#: ``val_every``: the steps its validations run at move NT-ASGD's trigger and a
#: ``ReduceLROnPlateau``'s steps, and a validation ``DataLoader``'s ``iter()`` draws from the
#: global RNG (the dropout masks after it).
#: A resume with other values trains on beside the checkpoint's optimizer state as no run would
#: have, so ``Trainer.load`` warns, naming them (:meth:`TrainConfig.changed_step_settings`). The
#: others (:data:`FREE_FIELDS`) say how long a run goes, when it stops early, what it logs and
#: writes, and where: a resume may change them on purpose (``max_steps`` to extend a run;
#: ``rnnkit train --resume`` sets its budget, patience and device, saying so). ``nonmono`` is
#: free here: ``NTASGD``'s ``load_state_dict`` warns of it where it still matters (before the
#: averaging triggered).
STEP_FIELDS = (
    "stateful", "carry_state", "batch_first", "tbptt_k1", "tbptt_k2", "clip_norm", "clip_value",
    "scale_lr_by_seq_len", "nt_asgd", "amp", "val_every", "scheduler_interval",
)  # fmt: skip

#: The fields a resume may change without a word (every other field is in :data:`STEP_FIELDS`).
FREE_FIELDS = (
    "max_epochs", "max_steps", "max_minutes", "patience", "validate_at_end", "min_delta", "nonmono",
    "log_every", "out_dir", "checkpoint_every", "keep_last", "save_best", "resume", "progress",
    "tensorboard", "plot", "device",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Training-loop settings. ``None`` means "off" unless stated.

    Model protocol: ``stateful=True``: ``model(inputs, state) -> (output, new_state)``
    (``state`` is None at the start); ``stateful=False``: ``model(inputs) -> output``.
    ``carry_state``: carry the state from batch to batch (LM streams from
    ``bptt_batches``), detached in between; False starts every batch from ``None``
    (independent sequences); carried over a shuffled loader it is a ``ValueError`` at ``fit()``
    (:meth:`check_carried_order`). The state is reset at every epoch start.

    Truncated BPTT (Williams & Peng): across batches, every ``bptt_batches`` window is
    one TBPTT(k1=k2=seq_len) segment. Within a batch, ``tbptt_k1`` splits a long batch
    into updates every ``k1`` steps, each backpropagating ``tbptt_k2`` (>= k1, default
    k1) steps; k2 > k1 recomputes the overlap from a stored state.
    """

    # max_epochs, max_steps and max_minutes all hold (the first reached stops): with the default of one
    # epoch, a step or time budget beyond an epoch needs max_epochs raised (rnnkit train does so)
    max_epochs: int = 1
    max_steps: int | None = None  # a step = one batch
    max_minutes: float | None = None  # time budget; stops cleanly (and checkpoints)
    stateful: bool = True
    carry_state: bool = True
    batch_first: bool = False  # time dimension of inputs/outputs: 1 if True else 0
    tbptt_k1: int | None = None
    tbptt_k2: int | None = None
    clip_norm: float | None = None  # clip_grad_norm_ (L2 over all parameters); not with clip_value
    clip_value: float | None = None  # clip_grad_value_; not with clip_norm
    scale_lr_by_seq_len: bool = True  # multiply lr by batch.lr_scale (variable windows)
    val_every: int | None = None  # validate every N steps; None: at each epoch end
    patience: int | None = None  # early stopping: validations without improvement
    # a validation at the last step when it had none (before the final checkpoint): it counts
    # toward save_best and patience like every validation, not NT-ASGD or ReduceLROnPlateau
    validate_at_end: bool = False
    min_delta: float = 0.0
    nt_asgd: bool = False  # AWD-LSTM's non-monotonically triggered averaging
    nonmono: int = 5
    log_every: int = 10
    # metrics.jsonl/.csv, loss.png, tensorboard/, checkpoints/; locked by fit(); a Path is kept as str
    out_dir: str | os.PathLike | None = None
    checkpoint_every: int | None = None  # steps (needs out_dir); a final checkpoint is always written
    keep_last: int | None = 3  # newest checkpoints kept; None keeps every one (as save_checkpoint)
    save_best: bool = False  # the weights of the best validation so far in out_dir/best (needs out_dir)
    resume: bool = False  # continue from out_dir/checkpoints if there is one (else: a warning)
    progress: bool | None = None  # None: when stderr is a TTY
    tensorboard: bool = True  # when installed and out_dir is set
    plot: bool = True  # loss.png in out_dir at the end
    device: str | torch.device | None = None  # None: where the model's parameters are; kept as str
    amp: str | None = None  # mixed precision: "bf16" or "fp16" autocast of the forward (precision.py)
    # when the scheduler steps: "step" (after each step that made an update) or "epoch" (at each
    # epoch's end, after its validation: StepLR in epochs); a ReduceLROnPlateau steps at validations
    scheduler_interval: str = "step"

    def __setattr__(self, name: str, value: Any) -> None:
        """A setting assigned after creation (``trainer.config.max_steps = 6``) is checked (and
        stored) as at creation: ``"7"`` or ``-1`` was taken and failed mid-run, or never stopped.
        The whole config is checked again (the same checks, the pairs' too); on an error the
        setting keeps its old value."""
        if name not in self.__dataclass_fields__ or not self.__dict__.get("_checked"):
            object.__setattr__(self, name, value)  # __init__, or __post_init__'s own stores
            return
        old = getattr(self, name)
        object.__setattr__(self, name, value)
        try:
            self.__post_init__()
        except BaseException:
            object.__setattr__(self, name, old)
            object.__setattr__(self, "_checked", True)
            raise

    def __post_init__(self) -> None:
        object.__setattr__(self, "_checked", False)  # its stores (numpy's as int, ...) are not checked again

        def positive(name: str) -> None:
            v = getattr(self, name)
            if v is not None and not v > 0:  # NaN too: a budget that never ends, NaN gradients
                raise ValueError(f"{name} must be > 0 or None, got {v}")

        # first: a truthy str ("no", "false") or int passed for a switch turned it on (nt_asgd="no"
        # averaged the weights) or made the checks below misfire (resume="no" needed an out_dir)
        for f in fields(self):
            if f.type not in ("bool", "bool | None"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, np.bool_):  # kept as a bool: the config is stored as JSON in checkpoints
                setattr(self, f.name, bool(v))
            elif not (isinstance(v, bool) or (v is None and f.type == "bool | None")):
                kind = "a bool or None" if f.type == "bool | None" else "a bool"
                raise ValueError(f"{f.name} must be {kind}, got {v!r}")
        for name in (  # counts of steps, epochs, windows: a float passed and failed later or rounded
            "max_epochs",
            "max_steps",
            "tbptt_k1",
            "tbptt_k2",
            "val_every",
            "patience",
            "log_every",
            "checkpoint_every",
            "keep_last",
            "nonmono",
        ):
            v = getattr(self, name)
            if v is not None and not _checks.is_int(v):
                raise ValueError(f"{name} must be an int, got {v!r}")
            if v is not None:  # numpy's as int: the config is JSON in checkpoints (the final one failed)
                setattr(self, name, int(v))
        for name in ("max_minutes", "clip_norm", "clip_value", "min_delta"):  # a str failed mid-run
            v = getattr(self, name)
            if (v is not None or name == "min_delta") and not _checks.is_real(v):
                raise ValueError(f"{name} must be a number, got {v!r}")
            if v is not None and not isinstance(v, (int, float)):  # numpy's, a Fraction: as JSON's float
                setattr(self, name, float(v))
        if self.device is not None:  # a torch.device as well: stored as str, as out_dir
            if not isinstance(self.device, (str, torch.device)):
                raise ValueError(f"device must be a str or torch.device or None, got {self.device!r}")
            try:  # "" was taken for None (the model's device); a misspelt one failed in Trainer alone
                torch.device(self.device)
            except RuntimeError as e:
                raise ValueError(
                    f"device must name a device ('cpu', 'cuda:0') or be None, got {self.device!r}: {e}"
                ) from None
            self.device = str(self.device)
        if not 0 <= self.min_delta < math.inf:  # a negative one counted worse validations as the best
            raise ValueError(f"min_delta must be a finite number >= 0, got {self.min_delta}")
        for name in (
            "max_steps",
            "max_minutes",
            "tbptt_k1",
            "tbptt_k2",
            "clip_norm",
            "clip_value",
            "val_every",
            "patience",
            "checkpoint_every",
        ):
            positive(name)
        for name in ("max_epochs", "log_every", "keep_last", "nonmono"):
            v = getattr(self, name)
            if v is None and name == "keep_last":  # every checkpoint kept
                continue
            if v is None or v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        check_amp(self.amp)
        if self.scheduler_interval not in ("step", "epoch"):  # "epochs" stepped it every step, silently
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {self.scheduler_interval!r}")
        if self.out_dir is not None:  # a pathlib.Path as well: stored as str (config.json is JSON)
            if not isinstance(self.out_dir, (str, os.PathLike)):
                raise ValueError(f"out_dir must be a path (str or os.PathLike), got {self.out_dir!r}")
            self.out_dir = os.fspath(self.out_dir)
        if self.tbptt_k2 is not None and self.tbptt_k1 is None:
            raise ValueError("tbptt_k2 needs tbptt_k1 (the number of steps between updates)")
        if self.tbptt_k1 is not None:
            if not self.stateful:
                raise ValueError("tbptt_k1 needs a stateful model (stateful=True)")
            if self.tbptt_k2 is not None and self.tbptt_k2 < self.tbptt_k1:
                raise ValueError(f"tbptt_k2 must be >= tbptt_k1, got k1={self.tbptt_k1}, k2={self.tbptt_k2}")
        if self.clip_norm is not None and self.clip_value is not None:
            # both applied, one after the other, in an order nothing said (Keras refuses the pair too)
            raise ValueError(
                f"clip_norm and clip_value are exclusive (choose one way to clip), "
                f"got clip_norm={self.clip_norm}, clip_value={self.clip_value}"
            )
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs out_dir (where the checkpoints are)")
        if self.checkpoint_every is not None and self.out_dir is None:
            # refused here, not at the first checkpoint: that one comes after the steps it would lose
            raise ValueError(
                f"checkpoint_every={self.checkpoint_every} needs out_dir (where the checkpoints go), got None"
            )
        if self.save_best and self.out_dir is None:
            raise ValueError("save_best=True needs out_dir (where out_dir/best goes), got None")
        object.__setattr__(self, "_checked", True)  # from now on, an assigned setting is checked

    def check_unvalidated(self, scheduler: Any = None) -> None:
        """Raise a ``ValueError`` naming the settings that act on validations alone (``patience``,
        ``nt_asgd``, ``save_best``, a ``ReduceLROnPlateau`` ``scheduler``, a ``val_every``): a run
        without validation data would silently never stop early, average, write ``best/``, lower its
        rate or validate (``val_every``'s default is None: one set asks for validations)."""
        from torch.optim.lr_scheduler import ReduceLROnPlateau

        named = [f"val_every={self.val_every}"] * (self.val_every is not None)
        named += [f"patience={self.patience}"] * (self.patience is not None)
        named += ["nt_asgd=True"] * self.nt_asgd + ["save_best=True"] * self.save_best
        named += ["scheduler ReduceLROnPlateau"] * isinstance(scheduler, ReduceLROnPlateau)
        if named:
            verb = "acts" if len(named) == 1 else "act"
            raise ValueError(f"{', '.join(named)} {verb} on validations: fit() needs val_data, got None")

    def check_carried_order(self, train_data: Any, step_fn: Any = None, what: str = "training data") -> None:
        """Raise a ``ValueError`` when ``carry_state`` would hand each batch the state where an
        unrelated one stopped: the default step (no ``step_fn``, which may return no state) of a
        ``stateful`` model over a loader that shuffles (a ``RandomSampler``, a shuffling
        ``DistributedSampler`` or :class:`~rnnkit.data.BucketBatchSampler`). Carrying needs
        batches that continue each other, as ``bptt_batches``' windows do; shuffled ones trained
        silently from another sequence's state (or failed on a short last batch's size). ``what``:
        the data's name in the message (``fit()`` checks ``val_data`` too: validation carries the
        state alike)."""
        from torch.utils.data import RandomSampler, SubsetRandomSampler, WeightedRandomSampler

        if not (self.stateful and self.carry_state) or step_fn is not None:
            return
        batch_sampler = getattr(train_data, "batch_sampler", None)
        owners = (
            getattr(train_data, "sampler", None),
            batch_sampler,
            getattr(batch_sampler, "sampler", None),
        )
        random = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)
        if any(isinstance(o, random) or getattr(o, "shuffle", False) is True for o in owners):
            raise ValueError(
                "carry_state=True carries the recurrent state from batch to batch, which needs batches "
                f"that continue each other (bptt_batches' streams), but the {what} is shuffled: "
                "pass carry_state=False (every batch starts from None) or unshuffled streams"
            )

    def changed_step_settings(self, stored: Mapping[str, Any] | None) -> dict[str, tuple[Any, Any]]:
        """The :data:`STEP_FIELDS` whose value in ``stored`` (a checkpoint's config, as
        :meth:`to_dict` wrote it) is not this config's, as ``{name: (stored, now)}``. A field
        ``stored`` lacks (a checkpoint of before it, or without a config) is left out: nothing
        says it differed."""
        if not isinstance(stored, Mapping):
            return {}
        return {
            name: (stored[name], getattr(self, name))
            for name in STEP_FIELDS
            if name in stored and stored[name] != getattr(self, name)
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_trainer_arguments(config: Any, model: Any, loss_fn: Any, step_fn: Any) -> None:
    """:class:`~rnnkit.train.Trainer`'s arguments of another type, named at construction: a dict
    as ``config`` failed in dataclasses' words ("replace() should be called on dataclass
    instances"), a model or a function of another type only at its first use."""
    if config is not None and not isinstance(config, TrainConfig):
        got = type(config).__name__
        raise TypeError(f"config must be a TrainConfig or None (or its fields as keywords), got {got}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, fn in (("loss_fn", loss_fn), ("step_fn", step_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
