"""The flags ``rnnkit train --resume`` restores from the run's ``run.json``: its ``"train"``
(:data:`TRAIN_FLAGS`, and :data:`STOP_FLAGS` by their own rule), and the model flags it ignores,
saying so (:data:`MODEL_FLAGS`). Called by :func:`rnnkit.cli.common.prepare_out` (what a new
run stores) and :func:`rnnkit.cli.common.run_train` (before the task builds anything)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rnnkit.cli import CLIError
from rnnkit.cli.common import device_of, echo, resolve_amp
from rnnkit.cli.rundir import read_run

__all__ = ["TRAIN_FLAGS", "BUDGET_FLAGS", "STOP_FLAGS", "MODEL_FLAGS", "train_flags", "budget_flags",
           "stop_flags", "restore_train_flags", "ignored_model_flags"]  # fmt: skip


#: The flags that shape a run's training (its data too: generated tasks draw it from --seed), stored
#: in run.json's "train" and restored by --resume (:func:`restore_train_flags`); those a task has.
#: ``amp`` is stored resolved (off/bf16/fp16: charlm's auto depends on the machine and budget).
TRAIN_FLAGS = (
    "batch_size", "lr", "clip", "seed", "sampling", "sampling_k", "sampling_steps", "sampling_min", "amp"
)  # fmt: skip


def _amp(args: argparse.Namespace) -> str:
    """The precision ``--amp`` trains in: ``off``, ``bf16`` or ``fp16``."""
    return resolve_amp(args.amp or "off", device_of(args)) or "off"


#: ``charlm``'s budget, also in its run.json's "train" (``budget_is_run_setting``): its learning-rate
#: schedule spans it, so a resume with none typed (the default, 5 minutes) ran the steps left at
#: another schedule's rates. Restored by its own rule (:func:`_restore_budget`); the other tasks'
#: budgets are limits alone, not stored.
BUDGET_FLAGS = ("max_minutes", "max_steps")


def budget_flags(args: argparse.Namespace) -> dict[str, Any]:
    """``charlm``'s :data:`BUDGET_FLAGS` as ``args`` has them; ``{}`` for the other tasks."""
    if not getattr(args, "budget_is_run_setting", False):
        return {}
    return {f: getattr(args, f) for f in BUDGET_FLAGS}


def train_flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {f: getattr(args, f) for f in TRAIN_FLAGS if hasattr(args, f)}
    flags = {**flags, "amp": _amp(args)} if "amp" in flags else flags
    return {**flags, **budget_flags(args), **stop_flags(args)}


def _budget_text(budget: dict[str, Any]) -> str:
    return " ".join(f"--{f.replace('_', '-')} {v:g}" for f, v in budget.items() if v is not None) or "none"


def _restore_budget(args: argparse.Namespace, stored: dict[str, Any]) -> None:
    """``charlm``'s ``--resume``: the run's budget when neither ``--max-minutes`` nor ``--max-steps``
    is typed; a typed one is this resume's whole budget (a run may go on past its own), with a line
    saying so where it differs from the run's: the schedule's rates of the steps left follow it."""
    budget = budget_flags(args)
    if not budget or not any(f in stored for f in BUDGET_FLAGS):  # other tasks; runs before it
        return
    run = {f: stored.get(f) for f in BUDGET_FLAGS}
    if not set(BUDGET_FLAGS) & set(getattr(args, "given", ())):
        for flag, value in run.items():
            setattr(args, flag, value)
    elif budget != run:
        echo(f"resuming with the budget {_budget_text(budget)} (the run's was {_budget_text(run)}): the "
             "learning-rate schedule of the steps left spans it")  # fmt: skip


#: Early stopping, the best weights and the validations (and checkpoints) they act on, also in
#: run.json's "train", but restored by --resume otherwise (:func:`_restore_stop_flags`): a patience
#: is a limit, which a resume may raise; the cadence is the run's unless one is given.
STOP_FLAGS = ("patience", "save_best", "val_every", "checkpoint_every")


def stop_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {f: getattr(args, f) for f in STOP_FLAGS if hasattr(args, f)}


def _restore_stop_flags(args: argparse.Namespace, stored: dict[str, Any]) -> None:
    """``--resume``: the run's ``--patience`` unless one is given (raise it to go on after an early
    stop; another is used, saying so, also where the run had none), ``--save-best`` on once the
    run had it (off, ``best/`` would keep an earlier best while the run goes on; turned on by a
    resume, it says from when), and the run's ``--val-every``/``--checkpoint-every`` unless given
    (another is used, saying so): else the parser's default, e.g. validations at epoch ends only,
    which the patience counted and no checkpoint came with until the end."""
    patience, best = stored.get("patience"), bool(stored.get("save_best"))
    if args.patience is None:
        args.patience = patience
    elif patience is None:  # (the trainer counted every validation: they count toward it)
        echo(f"resuming with --patience {args.patience}, which the run had off: its validations since its "
             "best count toward it")  # fmt: skip
    elif args.patience != patience:
        echo(f"resuming with --patience {args.patience} (the run's was {patience})")
    if best:
        args.save_best = True
    elif args.save_best:
        echo("resuming with --save-best, which the run had off: best/ gets the weights of the first "
             "validation better than the run's best so far")  # fmt: skip
    for flag in ("val_every", "checkpoint_every"):  # (what --patience counts; runs before them: unset)
        if flag not in stored:
            continue
        if flag not in getattr(args, "given", ()):
            setattr(args, flag, stored[flag])
        elif getattr(args, flag) != stored[flag]:
            run = "unset" if stored[flag] is None else stored[flag]
            echo(f"resuming with --{flag.replace('_', '-')} {getattr(args, flag)} (the run's was {run})")


def restore_train_flags(args: argparse.Namespace) -> None:
    """``--resume``: set the :data:`TRAIN_FLAGS` to the run's stored values before the task builds
    its data, loaders and optimizer (as ``--seq-len``/``--window``: the stored value wins, and a
    different one given on the command line (:class:`~rnnkit.arch.Given`) is ignored, saying so; a parser
    default is just replaced; ``--amp`` is compared resolved; :data:`STOP_FLAGS`: their own rule,
    :func:`_restore_stop_flags`). Runs without them: nothing."""
    if not getattr(args, "resume", False):
        return
    try:
        stored = read_run(Path(args.out)).get("train")
    except (CLIError, OSError):  # no run here: prepare_out says so
        return
    from rnnkit.cli.sampling import stored_k  # (it imports this module)

    if hasattr(args, "save_best"):
        _restore_stop_flags(args, stored or {})
    _restore_budget(args, stored or {})
    for flag, value in (stored or {}).items():
        if flag in STOP_FLAGS or flag in BUDGET_FLAGS:
            continue
        value = stored_k(args, stored) if flag == "sampling_k" else value  # an older release's null
        if not hasattr(args, flag):
            continue
        given = getattr(args, flag)
        same = given == value or (flag == "amp" and given is not None and _amp(args) == value)
        no_k = flag == "sampling_k" and value is None  # teacher, linear: a k given means nothing
        if flag in getattr(args, "given", ()) and not same and not no_k:
            name = "--" + flag.replace("_", "-")
            echo(f"resuming with the run's {name} {value} (command line's {given} ignored)")
        setattr(args, flag, value)


#: The flags of run.json's "model" (of its "arch" but ``embedding_dim``), as ``args`` names them.
MODEL_FLAGS = ("cell", "hidden", "layers", "dropout", "opt", "kernel_size", "conv_channels", "conv_layers",
               "embedding_dim")  # fmt: skip


def ignored_model_flags(args: argparse.Namespace, stored: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """The :data:`MODEL_FLAGS` given on the command line (:class:`~rnnkit.arch.Given`) whose value in the
    command's model ``run`` differs from the stored model's: those ``--resume`` ignores."""
    ignored = []
    for dest in MODEL_FLAGS:
        if dest not in getattr(args, "given", ()):
            continue
        key = "options" if dest == "opt" else dest
        old, new = (m if key == "embedding_dim" else m.get("arch") or {} for m in (stored, run))
        if old.get(key) != new.get(key):
            ignored.append("--arch" if dest == "cell" else "--" + dest.replace("_", "-"))
    return ignored
