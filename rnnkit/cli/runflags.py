"""The run flags every ``rnnkit train`` command shares (``--out --resume --max-minutes
--max-steps --epochs --batch-size --lr --clip --seed --device --patience --save-best ...``) and
their argparse types."""

from __future__ import annotations

import argparse
import math
from typing import Any

from rnnkit.arch import Given, arch_config, build_recurrent, positive_int
from rnnkit.cli import CLIError

__all__ = ["add_run_arguments", "checked_arch_config", "positive_float", "seed_int"]


def checked_arch_config(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """:func:`rnnkit.arch.arch_config` of ``args``, the flags checked by building the layer once
    (input width 1): an unknown ``--arch``, an ``--opt`` the family does not take or a bad option
    value, ``--dropout`` against ``--opt dropout`` are usage errors (status 2). They were found
    building the task's model, a failure at run time (status 1). A resume builds the stored
    model, whatever was typed (:func:`rnnkit.cli.common.prepare_out` says what is ignored).
    ``extra``: the task's own keywords of the encoder (the tagger's ``bidirectional=True``, whose
    centred kernels need an odd ``--kernel-size``)."""
    try:
        config = arch_config(args)
        if not getattr(args, "resume", False):
            build_recurrent(config, 1, **extra)
    except ValueError as e:
        raise CLIError(str(e), code=2) from None
    return config


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return v


def seed_int(text: str) -> int:
    """``--seed``: an integer torch can seed with, in [-2**63, 2**64) (beyond, it failed in
    ``torch.manual_seed`` with "Overflow when unpacking long long", naming no flag)."""
    from rnnkit.train.seed import check_seed

    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [-2**63, 2**64), got {text!r}") from None


def _clip(text: str) -> float:
    """``--clip``: a finite number >= 0 (0 = off; a negative or NaN one was silently off too)."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 (0 = off), got {text!r}")
    return v


def add_run_arguments(
    p: argparse.ArgumentParser,
    *,
    task: str,
    lr: float,
    batch_size: int,
    max_minutes: float | None = None,
    epochs: int = 1,
    minutes_help: str | None = None,
    val_every: int | None = None,
) -> None:
    """``--out --resume --max-minutes --max-steps --epochs --seed --device --lr ...``."""
    g = p.add_argument_group("run")
    g.add_argument(
        "--out",
        default=f"runs/{task}",
        metavar="DIR",
        help=f"output directory: checkpoints, metrics.jsonl, loss.png (default runs/{task})",
    )
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument(
        "--max-minutes",
        type=positive_float,
        default=max_minutes,
        action=Given,  # (charlm's --resume restores the run's budget unless one is typed: BUDGET_FLAGS)
        metavar="M",
        help=minutes_help
        or f"wall-clock training budget (default: {'none' if max_minutes is None else f'{max_minutes:g}'})",
    )
    g.add_argument(
        "--max-steps", type=positive_int, default=None, action=Given, metavar="N", help="stop after N updates"
    )
    g.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"passes over the data (default {epochs}, unbounded with --max-minutes/--max-steps)",
    )
    a = g.add_argument
    a("--batch-size", type=positive_int, default=batch_size, action=Given, help=f"(default {batch_size})")
    a("--lr", type=positive_float, default=lr, action=Given, help=f"Adam learning rate (default {lr})")
    a("--clip", type=_clip, default=1.0, action=Given, help="gradient-norm clipping, 0 = off (default 1.0)")
    a("--seed", type=seed_int, default=0, action=Given, help="seeds Python, NumPy and torch (default 0)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    g.add_argument("--log-every", type=positive_int, default=10, metavar="N", help="(default 10)")
    g.add_argument(
        "--patience",
        type=positive_int,
        default=None,
        metavar="N",
        help="early stopping: stop after N validations in a row without a new best (default: off; "
        "--resume: the run's)",
    )
    g.add_argument(
        "--save-best",
        action="store_true",
        help="keep the weights of the best validation so far in --out's best/ (sample, eval and predict "
        "--best use them; --resume keeps it on)",
    )
    g.add_argument(  # (Given: --resume restores the run's unless one is typed)
        "--val-every",
        type=positive_int,
        default=val_every,
        action=Given,
        metavar="N",
        help="validate every N steps (default: "
        + (f"{val_every} and at the end)" if val_every else "every epoch end and at the end)")
        + "; --resume: the run's",
    )
    g.add_argument(
        "--checkpoint-every",
        type=_non_negative_int,
        default=None,
        action=Given,
        metavar="N",
        help="checkpoint every N steps, 0 = only the final one (default: at each validation, with "
        "--val-every; a final one is always written; --resume: the run's)",
    )
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    g.add_argument(
        "--tune-malloc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep freed memory in the process, no page faults per step (default on; see tune_malloc)",
    )
    g.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="CUDA: replay each recurrent layer as CUDA graphs (rnnkit.cuda_graphed; ~5x faster "
        "training steps with recurrent dropout, zoneout or layer norm; packed batches run eagerly)",
    )
    g.add_argument(
        "--amp",
        choices=["auto", "off", "bf16", "fp16"],
        action=Given,
        default=None,  # unset: the task's default (off; charlm: auto), and --resume's the run's
        help="mixed precision of the forward (torch.autocast; fp16 with loss scaling); auto: bf16 "
        "where the device computes it natively (CPUs with AVX512-BF16 or AMX), else off (default off; "
        "charlm: auto, which trains in float32 from 20 minutes on)",
    )
    g.add_argument("--epochs-default", dest="epochs_default", default=epochs, help=argparse.SUPPRESS)


def _non_negative_int(text: str) -> int:
    """``--checkpoint-every``: an integer >= 0 (0 = the final checkpoint only)."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 0 (0 = the final checkpoint only), got {text!r}"
        )
    return v
