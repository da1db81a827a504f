"""What every ``rnnkit train`` command shares: the output directory, the ``run.json`` that lets
``sample``/``eval``/``--resume`` rebuild a model, and the trainer (the run flags themselves:
:mod:`rnnkit.cli.runflags`; those ``--resume`` restores: :mod:`rnnkit.cli.resumeflags`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnkit.arch import Given, positive_int  # noqa: F401 - re-exported
from rnnkit.cli import CLIError
from rnnkit.cli.rundir import (  # noqa: F401 - re-exported: the run directory's helpers
    _LOCKS,
    RUN_FILE,
    RUN_FORMAT_VERSION,
    _same_data,
    changed_encoding,
    check_data_files,
    create_run_dir,
    data_record,
    find_run_dir,
    load_model_weights,
    read_results,
    read_run,
    sweep_run_dir,
    write_json,
    write_results,
)
from rnnkit.cli.runflags import add_run_arguments, positive_float  # noqa: F401 - re-exported

__all__ = [
    "add_run_arguments",
    "prepare_out",
    "make_trainer",
    "write_json",
    "read_run",
    "read_results",
    "find_run_dir",
    "load_model_weights",
    "add_best_argument",
    "require",
    "echo",
]


def add_best_argument(p: argparse.ArgumentParser) -> None:
    """``--best`` of the commands that use a trained run (:func:`load_model_weights`)."""
    p.add_argument(
        "--best",
        action="store_true",
        help="use the run's best weights (best/, kept by train --save-best) instead of its last",
    )


def echo(*parts: Any) -> None:
    """Print (rank 0 only under torchrun: every rank runs the same command)."""
    from rnnkit.train.distributed import is_main_process

    if is_main_process():
        print(*parts, flush=True)


def require(module: str, what: str) -> Any:
    """Import an optional dependency or fail with the command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CLIError(
            f"{what} needs the '{module.split('.')[0]}' package: pip install 'rnnkit[tasks]'"
        ) from e


def refuse_unread(args: argparse.Namespace, flags: tuple[str, ...], why: str) -> None:
    """A usage error for the task ``flags`` (``args`` names, :class:`Given`) typed on the command
    line that this run does not read (e.g. classify's ``--tokens`` with ``--data digits``): they
    were silently ignored. ``why``: what the run is, e.g. ``"--data digits"``."""
    typed = [f for f in flags if f in getattr(args, "given", ())]
    if typed:
        names = ", ".join("--" + f.replace("_", "-") for f in typed)
        raise CLIError(f"{names} {'does' if len(typed) == 1 else 'do'} not apply to {why}", code=2)


def device_of(args: argparse.Namespace) -> torch.device:
    try:
        dev = torch.device(args.device)
    except RuntimeError as e:
        raise CLIError(f"--device: {e}", code=2) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device}: CUDA is not available on this machine", code=2)
    return dev


def prepare_out(args: argparse.Namespace, run: dict[str, Any]) -> dict[str, Any]:
    """Refuse to overwrite an existing run in ``--out`` without ``--resume``, and return the run
    description to use (the stored one when resuming, so the model is rebuilt exactly as it was;
    a new one gets :data:`rnnkit.cli.resumeflags.TRAIN_FLAGS` as ``"train"``). Seeds everything
    from ``--seed``; ``--tune-malloc``. Writes nothing (:func:`make_trainer` does, once the model
    and data are built: a command failing on its flags or data must leave no half-made run
    directory) but, in a run directory with checkpoints, its lock and the sweep of killed
    checkpoint writes. Under
    torchrun rank 0's ``--out`` decides both (it alone writes there); ``--resume`` needs the
    checkpoint on every rank (each loads it)."""
    from rnnkit.cli.resumeflags import (  # (imports this module)
        budget_flags,
        ignored_model_flags,
        stop_flags,
        train_flags,
    )
    from rnnkit.train import latest_checkpoint, seed_everything
    from rnnkit.train.checkpoint import stale_latest
    from rnnkit.train.distributed import on_every_rank
    from rnnkit.train.outdir import not_a_directory

    out = Path(args.out)
    if why := not_a_directory(out):
        raise CLIError(f"--out {out} {why}", code=2)  # a bad flag value
    # the sweep first: it may move the latest checkpoint back (every rank, or its all-reduce hangs)
    if _rank_0_finds((out / "checkpoints").is_dir(), args):
        sweep_run_dir(out, _collective_device(args))
    has_ckpt = latest_checkpoint(out / "checkpoints") is not None
    if args.resume:
        if not has_ckpt:
            stale = stale_latest(out / "checkpoints")
            raise CLIError(f"--resume: no checkpoint in {out / 'checkpoints'} to continue from{stale}")
        stored = read_run(out)
        if stored["task"] != run["task"]:
            raise CLIError(f"--resume: {out} holds a '{stored['task']}' run, not '{run['task']}'")
        # other data: not a continuation (runs that predate a task's `data` record cannot be
        # checked); tag's `valid_data`, its --valid file or null (a 10% split of --data: other
        # training sentences)
        for key in ("data", "valid_data"):
            if key in stored and not _same_data(stored.get(key), run.get(key)):
                what = "validated on" if key == "valid_data" else "trained on"
                raise CLIError(
                    f"--resume: {out} was {what} {stored.get(key)!r}, this command loads "
                    f"{run.get(key)!r}; pass the data flags of the original run"
                )
        check_data_files(stored, run)  # the same path, other bytes: refused (the fingerprints)
        changed = changed_encoding(stored, run)
        if changed:  # the model's embedding/head follow the run's: a mis-encoded or refused load
            raise CLIError(
                f"--resume: {run.get('data')} now reads as {changed} (the file changed, or the release "
                "that trained the run read it otherwise); train a new run in another --out"
            )
        ignored = ignored_model_flags(args, stored.get("model") or {}, run.get("model") or {})
        if ignored:  # (flags not given: the parser's defaults, which need not be the run's, say nothing)
            flags = ", ".join(ignored)
            echo(f"resuming with the model stored in {out / RUN_FILE} (command-line {flags} ignored)")
        run = stored
        if "sampling_k" in run.get("train", {}) and hasattr(args, "sampling_k"):  # an older release's null
            run = {**run, "train": {**run["train"], "sampling_k": args.sampling_k}}  # resolved: the k used
        if stop_flags(args) or budget_flags(args):  # as this resume trains: what the next one restores
            run = {**run, "train": {**(run.get("train") or {}), **budget_flags(args), **stop_flags(args)}}
    elif _rank_0_finds(has_ckpt, args):  # rank 0 alone writes there: its refusal, every rank's alike
        msg = f"{out} already holds a run; pass --resume to continue it or choose another --out"
        raise on_every_rank(CLIError(msg))
    else:
        # what --resume restores; the format of run.json (rundir), written by new runs alone
        run = {"format_version": RUN_FORMAT_VERSION, **run, "train": train_flags(args)}
    args.run_to_write = run  # (make_trainer writes it)
    seed_everything(args.seed)
    if getattr(args, "tune_malloc", False):
        from rnnkit.train import tune_malloc

        tune_malloc()
    return run


def _collective_device(args: argparse.Namespace) -> Any:
    """The device of the ranks' all-reduces: the CUDA one (NCCL), else None (gloo, on the CPU)."""
    dev = device_of(args)
    return dev if dev.type == "cuda" else None


def _rank_0_finds(found: bool, args: argparse.Namespace) -> bool:
    """Rank 0's ``found`` on every rank under torchrun (an all-reduce; else ``found``): the ranks
    take --out's decisions alike, even where they see other files (a node-local --out)."""
    from rnnkit.train import distributed as dist

    if not dist.is_distributed():
        return found
    mine = float(found and dist.is_main_process())
    return dist.all_reduce_max(mine, _collective_device(args)) > 0


def run_train(args: argparse.Namespace) -> int:
    """``args.func(args)`` of ``rnnkit train``; under torchrun (``WORLD_SIZE`` > 1) in a process
    group, data-parallel: ``--batch-size`` is the global batch, each rank trains on its share
    (:func:`ranks`), rank 0 alone prints and writes; ``--device cuda`` means ``cuda:LOCAL_RANK``."""
    from rnnkit.cli.resumeflags import restore_train_flags  # (it imports this module)
    from rnnkit.train.distributed import cleanup_distributed, launched_world_size, setup_distributed

    try:
        if launched_world_size() <= 1:
            restore_train_flags(args)
            return args.func(args)
        info = setup_distributed(device="cpu" if device_of(args).type == "cpu" else None)
        args.device = str(info.device)
        restore_train_flags(args)  # (after the setup: rank 0 alone says what it restores)
        code = args.func(args)
        # Not on an error: a rank that failed alone (rank 0 writing best/ or a checkpoint) would wait
        # in the teardown's barrier while the others wait for it in the next collective, forever. It
        # leaves without it (main's finish_process), and its exit fails their collective instead.
        cleanup_distributed()
        return code
    finally:
        from rnnkit.train.outdir import unlock_out_dir

        while _LOCKS:
            unlock_out_dir(_LOCKS.pop())


def ranks() -> dict[str, int]:
    """``num_replicas``/``rank`` of this process for the task loaders (1/0 without torchrun)."""
    from rnnkit.train.distributed import get_rank, get_world_size

    return {"num_replicas": get_world_size(), "rank": get_rank()}


def graph_recurrent_layers(model: nn.Module) -> int:
    """Wrap every rnnkit/torch.nn recurrent layer of ``model`` in :func:`rnnkit.cuda_graphed`,
    in place (parameters and checkpoint keys unchanged); returns how many were wrapped."""
    import rnnkit

    layers = (nn.RNNBase, rnnkit.RNN, rnnkit.LSTM, rnnkit.GRU)
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, layers) and not isinstance(parent, rnnkit.CUDAGraphed)]  # fmt: skip
    for parent, name, child in found:
        setattr(parent, name, rnnkit.cuda_graphed(child))
    return len(found)


def make_trainer(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer, **kw: Any):
    """A :class:`rnnkit.train.Trainer` writing into ``--out`` with the run flags (``--cuda-graphs``:
    the model's recurrent layers wrapped first); creates ``--out`` and writes the run description
    that :func:`prepare_out` returned as ``run.json``."""
    from rnnkit.train import Trainer
    from rnnkit.train.precision import check_cpu_float16

    amp = resolve_amp(getattr(args, "amp", None) or "off", device_of(args))
    if amp == "fp16":  # before the run's directory: oneDNN's own words came at the first step
        try:
            check_cpu_float16(model, device_of(args), "--amp fp16")
        except ValueError as e:  # --amp against --arch and --device: flags that contradict each other
            raise CLIError(str(e), code=2) from None
    # under torchrun every rank ran the same checks (prepare_out); rank 0 writes, its failure raised on all
    create_run_dir(Path(args.out), args.run_to_write, _collective_device(args))
    if getattr(args, "cuda_graphs", False):  # (a CUDA --device: checked by the CLI's entry)
        echo(f"CUDA graphs for {graph_recurrent_layers(model)} recurrent layer(s)")

    if amp:
        echo(f"mixed precision: {amp} autocast of the forward")
    bounded = args.max_minutes is not None or args.max_steps is not None
    epochs = args.epochs or (10**9 if bounded else int(args.epochs_default))
    kw.setdefault("clip_norm", args.clip if args.clip and args.clip > 0 else None)
    if args.resume:
        from rnnkit.cli.finish import finished_run_notice

        kw["callbacks"] = [*kw.get("callbacks", ()), finished_run_notice(args)]
    return Trainer(
        model,
        optimizer,
        max_epochs=epochs,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        out_dir=str(args.out),
        resume=args.resume,
        progress=args.progress,
        device=str(device_of(args)),
        log_every=args.log_every,
        val_every=args.val_every,
        checkpoint_every=_checkpoint_every(args),
        patience=args.patience,
        save_best=args.save_best,
        validate_at_end=True,  # the final validation row: it counts toward best/ and --patience
        tensorboard=False,
        amp=amp,
        **kw,
    )


def _checkpoint_every(args: argparse.Namespace) -> int | None:
    """``--checkpoint-every``; by default a checkpoint at each validation step (``--val-every``),
    so a killed run resumes from its last validation instead of losing everything."""
    if args.checkpoint_every is not None:
        return args.checkpoint_every or None
    return args.val_every


def resolve_amp(amp: str, device: torch.device) -> str | None:
    """``--amp`` as ``TrainConfig.amp``: ``auto`` is bfloat16 on CPUs with native bfloat16
    arithmetic (there a 2x512 LSTM step takes 0.65x the float32 time, and the character LM
    learns the same per step: benchmarks/RESULTS.md), else off."""
    if amp == "auto":
        native = (
            getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        )
        return "bf16" if device.type == "cpu" and native else None
    return None if amp == "off" else amp


def warn(msg: str) -> None:
    print(f"rnnkit: {msg}", file=sys.stderr)
