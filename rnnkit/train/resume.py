"""A :class:`~rnnkit.train.Trainer`'s checkpoints: everything needed to continue exactly.

``save`` writes the model, optimizer, scheduler and the trainer's own state (step, epoch, data
position, every rank's RNG and recurrent state, metrics, NT-ASGD averages, the grad scaler)
through :mod:`rnnkit.train.checkpoint`; ``load`` restores them; ``save_best`` keeps the weights
of the best validation (``save_best=True``); ``_start_epoch`` starts an epoch at the position a
checkpoint (or a stopped ``fit()``) left. Kept apart from the loop in
:mod:`rnnkit.train.trainer`, whose attributes it reads and sets.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rnnkit.train import distributed as dist
from rnnkit.train.checkpoint import (
    _write_latest,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from rnnkit.train.historylog import read_history
from rnnkit.train.seed import data_generators, get_rng_state, set_rng_state
from rnnkit.train.serialize import fsync_dir
from rnnkit.train.state import move_to

__all__ = ["TrainerCheckpoints"]

_END = object()  # what next() returns for an exhausted iterator

log = logging.getLogger("rnnkit.train")


class TrainerCheckpoints:
    """``save``/``load`` of :class:`~rnnkit.train.Trainer` (a base class of it)."""

    @property
    def best_dir(self) -> Path | None:
        """``out_dir/best``: the checkpoint root of ``save_best`` (one checkpoint, the best)."""
        return Path(self.config.out_dir) / "best" if self.config.out_dir else None

    def save_best(self, val_loss: float) -> Path:
        """The weights just validated (NT-ASGD's average while it runs: the weights evaluated) as
        the one checkpoint of :attr:`best_dir`, with ``state`` ``{"val_loss", "epoch"}``, written
        atomically as every checkpoint (rank 0 alone calls it). ``load_checkpoint(best_dir,
        model)`` loads them."""
        if self.best_dir is None:  # called by hand (fit() calls it only with save_best, which needs one)
            raise ValueError("save_best needs out_dir (where out_dir/best goes), got None")
        with self.ntasgd.swapped() if self.ntasgd else nullcontext():
            return save_checkpoint(
                self.best_dir, self.raw_model, step=self.step, keep_last=1,
                state={"val_loss": val_loss, "epoch": self.step_epoch}, config=self.config.to_dict(),
            )  # fmt: skip

    def clear_best(self) -> None:
        """Remove an earlier run's ``best_dir`` at a new run's start, with ``save_best`` or not:
        its weights are another run's, and would stay there, named best (without ``save_best``, for
        good: loading it gave the earlier run's weights)."""
        if self.best_dir is not None and self.best_dir.exists():
            _remove_dir(self.best_dir)

    def _drop_newer_best(self) -> None:
        """At the start of a fit going on from a loaded checkpoint (``load``, ``resume=True``): a
        ``best_dir`` of a later step than the checkpoint's is from a branch left (an older
        checkpoint loaded, or a kill between ``save_best`` and the step's checkpoint). The loaded
        ``best_val`` does not know it, so it would stay, named best, against worse validations
        of this branch: it goes (rank 0; this run's next new best writes one)."""
        best = self.best_dir
        if best is not None and any(_step_of(p) > self.step for p in list_checkpoints(best)):
            _remove_dir(best)

    def save(self, root: str | Path | None = None) -> Path | None:
        """Checkpoint everything needed to continue exactly (rank 0 writes; all ranks
        must call it, as it gathers every rank's RNG and recurrent state)."""
        root = Path(root) if root is not None else self.checkpoint_dir
        if root is None:
            raise ValueError("no checkpoint directory: set out_dir or pass root")
        # a loaded checkpoint's RNG, epoch RNG and state, applied only when the next epoch starts (a
        # finished run relaunched starts none), are the run's, not this process's own
        here = self._resume
        if here is None:
            here = self._position(getattr(self, "_train_data", None))
        mine = {**here, "hidden": move_to(here["hidden"], "cpu")}
        ranks = dist.all_gather_object(mine)
        path = None
        if self.is_main:
            # the rows logged since the last checkpoint, appended to its history.jsonl (historylog):
            # the whole history in state.json made every checkpoint rewrite a file that grows all run
            history, put_history = self._history_log.stage(root, self.history)
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "tokens_seen": self.tokens_seen,
                "elapsed_s": self.elapsed,
                "best_val": self.best_val,
                "bad_evals": self.bad_evals,
                "acc": self._acc,
                # a float64 tensor (state.safetensors, 8 bytes a step, exact): as a JSON list
                # every checkpoint of a million-step run held ~20 MB of text
                "losses": torch.tensor(self.losses, dtype=torch.float64),
                "history_file": history,
                "ranks": ranks,
                "ntasgd": self.ntasgd.state_dict() if self.ntasgd else None,
                "raw_weights": self._raw_weights,  # set in the final checkpoint of an averaged run
                "grad_scaler": self.precision.state_dict(),
                # the batch size the data declares (load() compares a resume's with it; None: unknown)
                "batch_size": data_batch_size(getattr(self, "_train_data", None)),
            }
            path = save_checkpoint(
                root,
                self.raw_model,
                self.optimizer,
                self.scheduler,
                step=self.step,
                state=state,
                config=self.config.to_dict(),
                keep_last=self.config.keep_last,
                files=put_history,
            )
            self._history_log.saved(path, history)
        self._last_saved = self.step
        dist.barrier()
        return path

    def _start_epoch(self, train_data: Iterable[Any]) -> Iterator[Any]:
        """Iterator over this epoch's batches; on resume, positioned after the saved batch.

        The global RNG state at the epoch's ``iter()`` is remembered, and that of the data's own
        generators (``DataLoader(..., generator=g)``: :func:`~rnnkit.train.seed.data_generators`):
        replaying it and skipping the consumed batches reproduces a shuffled DataLoader's order
        exactly. Under DDP
        every rank raises alike when some rank's data has too few batches to skip.
        """
        res, self._resume = self._resume, None
        if res is not None:
            self._warn_other_batch_size(train_data)
        gens = self._rng_generators(train_data)  # a DataLoader's own generator: not the global RNG
        if res is not None and self.batch_in_epoch == 0:  # saved between epochs
            set_rng_state(res["rng"], *gens)
            res = None
        if res is not None:
            set_rng_state(res["epoch_rng"], *gens)
        self._epoch_rng = get_rng_state(*gens)
        it = iter(train_data)
        if res is None:
            self.state, self.batch_in_epoch = None, 0
            return it
        got = 0
        while got < self.batch_in_epoch and next(it, None) is not None:
            got += 1
        # a rank that raised alone would leave the others waiting in the next collective (a hang)
        fewest = -dist.all_reduce_max(-got, self._reduce_device()) if dist.is_distributed() else got
        if fewest < self.batch_in_epoch:
            where = f"got {got}" if fewest == got else f"got {got} on this rank, {int(fewest)} on another"
            raise dist.on_every_rank(
                ValueError(
                    f"resume: the data has fewer than {self.batch_in_epoch} "
                    f"batches in epoch {self.epoch} (it changed? {where})"
                )
            )
        set_rng_state(res["rng"], *gens)
        self.state = move_to(res["hidden"], self.device)
        # (checkpoints of before "rows" hold none: their first batch goes unchecked, as it went)
        self._state_rows = res.get("rows")
        return it

    def _rng_generators(self, train_data: Any) -> list[torch.Generator]:
        """The generators whose states go with the global RNG's into checkpoints: the data's own
        (:func:`~rnnkit.train.seed.data_generators`), then the trainer's ``generators`` (a
        ``ScheduledSampler``'s, say; the step draws from them) not among those, each once."""
        found = data_generators(train_data)
        return found + [g for g in self.generators if all(g is not f for f in found)]

    def _position(self, train_data: Any) -> dict[str, Any]:
        """Where training stands within its epoch, as a checkpoint's rank entry holds it (and a
        resume restores it): the RNG now (the data's own generators too), the RNG at the epoch's
        start, the carried state and its number of sequences (``rows``: a resume's first batch is
        checked against it, as every later batch is against the one before)."""
        rng = get_rng_state(*self._rng_generators(train_data))
        rows = getattr(self, "_state_rows", None) if self.state is not None else None
        return {"rng": rng, "epoch_rng": self._epoch_rng, "hidden": self.state, "rows": rows}

    def _epoch_over(self, batches: Iterator[Any], train_data: Any) -> bool:
        """Whether the epoch's iterator ``batches`` has no batch left, seen by drawing the next one.
        A batch drawn is dropped with the RNG (the data's generators too) as before it: a checkpoint
        or a second ``fit()`` goes on from the position as it was. At the end the RNG stays as
        running out left it, as for an epoch run to its end. Under DDP every rank calls it alike."""
        gens = self._rng_generators(train_data)
        rng = get_rng_state(*gens)
        if next(batches, _END) is _END:
            return True
        set_rng_state(rng, *gens)
        return False

    def load(self, path: str | Path) -> dict[str, Any]:
        """Load a checkpoint (directory or root) to continue training from it."""
        objs = (self.raw_model, self.optimizer, self.scheduler)
        history: list[list[dict[str, Any]]] = []

        def check(doc: dict[str, Any]) -> None:
            self._check_loadable(doc)
            # read before anything is loaded: a missing or damaged history.jsonl left the weights,
            # optimizer and counters the checkpoint's, the rest the trainer's own
            st, ckpt = doc["state"], Path(doc["path"])
            entry = st.get("history_file")  # checkpoints of before held the rows in state.json
            history.append(read_history(ckpt, entry) if entry is not None else list(st["history"]))

        given = _given_rates(self.optimizer, self.scheduler)
        doc = load_checkpoint(path, *objs, check=check)
        loaded = _given_rates(self.optimizer, self.scheduler)
        if given is not None and loaded is not None and given != loaded and self.is_main:
            # exact resume takes the checkpoint's, but a rate asked for and silently not used misleads
            log.warning(
                "%s: the optimizer's learning rates %s are replaced by the checkpoint's %s: a resume "
                "goes on with the run's (train another rate as a new run)",
                doc["path"], given, loaded,
            )  # fmt: skip
        self._warn_changed_settings(doc)
        st = doc["state"]
        self.step, self.epoch, self.batch_in_epoch = st["step"], st["epoch"], st["batch_in_epoch"]
        self.tokens_seen, self.elapsed = st["tokens_seen"], st["elapsed_s"]
        self.best_val, self.bad_evals, self._acc = st["best_val"], st["bad_evals"], st["acc"]
        losses = st["losses"]  # a JSON list in checkpoints of before the tensor
        self.losses = losses.tolist() if isinstance(losses, Tensor) else list(losses)
        self.history = history[0]
        self._history_log.loaded(Path(doc["path"]), st.get("history_file"))
        if self.ntasgd is not None and st["ntasgd"] is not None:
            self.ntasgd.load_state_dict(st["ntasgd"])
        # The model now holds the checkpoint's weights (averaged, if it is the final one of an
        # NT-ASGD run: then fit() puts these raw weights back before training on).
        self._raw_weights = st.get("raw_weights")
        self.precision.load_state_dict(st.get("grad_scaler"))
        self._resume = st["ranks"][dist.get_rank()]
        self._loaded_batch_size = st.get("batch_size")  # (checkpoints of before: None, unchecked)
        self._last_saved = self.step
        self._loaded = Path(doc["path"])
        return doc

    def _warn_changed_settings(self, doc: dict[str, Any]) -> None:
        """Log a warning (rank 0) when the run had a scheduler and this trainer has none, and one
        naming each setting of a training step (``STEP_FIELDS``) that is not the checkpoint's: the
        resume goes on with the new value beside the run's optimizer state, counters and RNG, so it
        no longer continues that run, and nothing said so."""
        if self.scheduler is None and "scheduler" in doc and self.is_main:
            # (another class is refused by load_checkpoint; none at all loaded, the rate frozen)
            rates = [float(g["lr"]) for g in self.optimizer.param_groups]
            log.warning(
                "%s: the run had a scheduler (%s), this trainer has none: the steps left train at the "
                "checkpoint's rates %s, not on the run's schedule (pass one of that class to continue it)",
                doc["path"], doc.get("scheduler_class"), rates,
            )  # fmt: skip
        changed = self.config.changed_step_settings(doc.get("config"))
        if changed and self.is_main:
            named = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            log.warning(
                "%s: resuming with training settings other than the checkpoint's (%s): the steps left "
                "train with the new ones, not as the run would have (set the checkpoint's to continue "
                "it, or train the new ones as a new run)",
                doc["path"], named,
            )  # fmt: skip

    def _warn_other_batch_size(self, train_data: Any) -> None:
        """Log a warning (rank 0) when the data a loaded checkpoint's run goes on with declares
        another batch size than the run's (:func:`data_batch_size`): inside an epoch the position
        skipped counts batches of the new size (other sequences than the run trained), and at an
        epoch's end the epochs left train otherwise than the run would have; both passed silently
        (without a carried state to check the rows against). Once per load."""
        old, self._loaded_batch_size = getattr(self, "_loaded_batch_size", None), None
        new = data_batch_size(train_data)
        if old is None or new is None or old == new or not self.is_main:
            return
        where = (
            f"the epoch goes on after its first {self.batch_in_epoch} batches of the new size, not where "
            "the run stopped"
            if self.batch_in_epoch
            else "the epochs left train otherwise than the run would have"
        )
        log.warning(
            "%s: resuming on data of batch_size %d, the run's was %d: %s (give the run's batch size to "
            "continue it, or train the new one as a new run)",
            self._loaded, new, old, where,
        )  # fmt: skip

    def _loaded_elsewhere(self) -> bool:
        """Whether the fit goes on from a checkpoint :meth:`load` read outside ``checkpoint_dir``
        (another run's): in ``out_dir`` it starts a run of its own there, as a new run does."""
        root, loaded = self.checkpoint_dir, self._loaded
        if self._resume is None or loaded is None or root is None:
            return False
        return loaded.parent.resolve() != root.resolve()

    def _name_loaded_latest(self) -> None:
        """At the start of a fit going on from :meth:`load` of one of ``out_dir``'s checkpoints:
        ``latest`` names it (rank 0 writes the pointer). Else, after loading an older one, until the
        fit's first checkpoint ``latest`` named the newest of the branch left: a kill there and
        ``resume=True`` went on from that one. The newer ones are kept, until ``keep_last`` rotates
        them out, first (:func:`~rnnkit.train.checkpoint.save_checkpoint`): a fit that trains
        nothing deletes nothing."""
        root, loaded = self.checkpoint_dir, self._loaded
        if not self.is_main or root is None or loaded is None or self._loaded_elsewhere():
            return
        latest = latest_checkpoint(root)
        if latest is None or latest.resolve() != loaded.resolve():
            _write_latest(root, loaded.name)

    def _check_loadable(self, doc: dict[str, Any]) -> None:
        """What :meth:`load` refuses, seen before anything is loaded (a refused checkpoint leaves
        the model, optimizer and counters as they were): another world size, another number of
        trainable parameters for an NT-ASGD run's raw weights, an NT-ASGD state that does not fit."""
        st = doc["state"]
        # a checkpoint of save_checkpoint alone (a model and optimizer, no trainer state) failed on
        # a bare KeyError ('ranks'), naming neither the checkpoint nor what it lacks
        missing = [k for k in _TRAINER_STATE if not isinstance(st, dict) or k not in st]
        if missing:
            raise ValueError(
                f"{doc['path']} is not a Trainer checkpoint: its state lacks {', '.join(missing)} "
                "(written by save_checkpoint alone? load its weights with load_checkpoint(path, model))"
            )
        if self.ntasgd is not None and st["ntasgd"] is not None:  # (loaded after the model)
            self.ntasgd.check_state(st["ntasgd"])
        raw = st.get("raw_weights")
        if raw is not None and len(raw) != len(self._trainable()):
            raise ValueError(
                f"checkpoint holds {len(raw)} raw weight tensors, the model has "
                f"{len(self._trainable())} trainable parameters"
            )
        if len(st["ranks"]) != dist.get_world_size():
            raise ValueError(
                f"checkpoint was written by {len(st['ranks'])} processes, "
                f"resuming with {dist.get_world_size()}: cannot continue exactly"
            )

    def _trainable(self) -> list[Tensor]:
        """The parameters NT-ASGD averages (the same list and order as ``NTASGD.params``)."""
        return [p for p in self.raw_model.parameters() if p.requires_grad]

    @torch.no_grad()
    def _set_trainable(self, values: list[Tensor]) -> None:
        for p, v in zip(self._trainable(), values, strict=True):
            p.copy_(v)


# the keys of a Trainer checkpoint's state that load() reads, in every version of the format
_TRAINER_STATE = (
    "step", "epoch", "batch_in_epoch", "tokens_seen", "elapsed_s",
    "best_val", "bad_evals", "acc", "losses", "ranks",
)  # fmt: skip


def _given_rates(optimizer: Any, scheduler: Any) -> list[float] | None:
    """The learning rates ``optimizer`` was built with, which loading a checkpoint replaces: each
    group's ``initial_lr`` (set by a scheduler, which decays from it), else without a scheduler its
    ``lr``; None where neither tells (a ``ReduceLROnPlateau``'s ``lr`` has moved since)."""
    groups = getattr(optimizer, "param_groups", None) or []
    if groups and all("initial_lr" in g for g in groups):
        return [float(g["initial_lr"]) for g in groups]
    return [float(g["lr"]) for g in groups] if scheduler is None else None


def data_batch_size(data: Any) -> int | None:
    """The batch size ``data`` declares: its own ``batch_size`` (``bptt_batches``, a
    ``DataLoader``'s), else its ``batch_sampler``'s (``BucketBatchSampler``, torch's
    ``BatchSampler``); None where neither is an int (an iterable of batches)."""
    for owner in (data, getattr(data, "batch_sampler", None)):
        n = getattr(owner, "batch_size", None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return None


def _step_of(checkpoint: Path) -> int:
    """The step of a ``step-<step>`` checkpoint directory (as :func:`list_checkpoints` lists them)."""
    return int(checkpoint.name.removeprefix("step-"))


def _remove_dir(path: Path) -> None:
    """Delete the directory ``path``, out of its name first (one rename: a crash in the deletion
    leaves a ``.old-<name>-*`` temporary beside it, which the next fit's claim of ``out_dir`` deletes,
    not a half-deleted ``path``)."""
    trash = Path(tempfile.mkdtemp(prefix=f".old-{path.name}-", dir=path.parent))
    path.replace(trash / path.name)
    fsync_dir(path.parent)  # the rename is durable before this run writes its own
    shutil.rmtree(trash, ignore_errors=True)
