"""The teacher-forcing / scheduled-sampling flags (Bengio et al. 2015) of the decoding tasks
(``rnnkit train forecast|seq2seq``) and the sampler they describe."""

from __future__ import annotations

import argparse
import math

from rnnkit.arch import positive_int
from rnnkit.cli import CLIError
from rnnkit.cli.common import Given, positive_float

__all__ = ["SAMPLING", "add_sampling_arguments", "sampler_of", "stored_k"]

SAMPLING = ("teacher", "linear", "exponential", "inverse_sigmoid")

#: The schedules each flag shapes (given with another, it would be ignored).
APPLIES = {"sampling_k": ("exponential", "inverse_sigmoid"), "sampling_steps": ("linear",),
           "sampling_min": ("linear", "exponential")}  # fmt: skip


def add_sampling_arguments(
    p: argparse.ArgumentParser, default: str, inverse_sigmoid_k: float = 1000.0
) -> None:
    """``--sampling``, ``--sampling-k``, ``--sampling-steps``, ``--sampling-min`` (default kind
    ``default``); ``inverse_sigmoid_k``: the task's default k of that schedule alone."""
    g = p.add_argument_group("teacher forcing / scheduled sampling (Bengio et al. 2015)")
    g.add_argument(
        "--sampling",
        choices=SAMPLING,
        default=default,
        action=Given,
        help=f"'teacher' = always feed the truth; else the decay of P(truth) (default {default})",
    )
    a = g.add_argument
    a(
        "--sampling-k",
        type=positive_float,
        default=None,
        action=Given,
        help=f"k of exponential (<1, default 0.999) / inverse_sigmoid (>=1, default {inverse_sigmoid_k:g})",
    )
    p.set_defaults(inverse_sigmoid_k=inverse_sigmoid_k)
    a(
        "--sampling-steps",
        type=positive_int,
        default=1000,
        action=Given,
        help="linear: steps to reach the floor",
    )
    a(
        "--sampling-min",
        type=_unit,
        default=0.0,
        action=Given,
        help="linear/exponential floor of P(truth), in [0, 1]",
    )


def _unit(text: str) -> float:
    """argparse type: a number in [0, 1] (a probability; NaN is none)."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def sampler_of(args: argparse.Namespace):
    """The :class:`~rnnkit.train.ScheduledSampler` of the ``--sampling*`` flags (a task builds it
    first: a k out of its schedule's range is a usage error before any data is loaded); sets
    ``args.sampling_k`` to the schedule's k (its default when none was given)."""
    from rnnkit.train import ScheduledSampler, TeacherForcingSchedule

    for flag, kinds in APPLIES.items():  # (--resume: the run's schedule, restore_train_flags says so)
        if flag in getattr(args, "given", ()) and args.sampling not in kinds and not args.resume:
            name = "--" + flag.replace("_", "-")
            raise CLIError(
                f"{name} does not apply to --sampling {args.sampling} (it shapes {', '.join(kinds)})", code=2
            )
    if args.sampling == "teacher":
        return ScheduledSampler(1.0)
    k = args.sampling_k
    if k is None and args.sampling == "inverse_sigmoid":  # (the task's default is that schedule's alone)
        k = getattr(args, "inverse_sigmoid_k", None)
    try:
        schedule = TeacherForcingSchedule(
            args.sampling, k=k, steps=args.sampling_steps, end=args.sampling_min
        )
    except ValueError as e:  # the k of another schedule's range
        raise CLIError(f"--sampling {args.sampling} --sampling-k {args.sampling_k:g}: {e}", code=2) from None
    # the k it uses (a default resolved), so run.json's "train" records it: None there left the
    # run's k to whatever default a later version has, and --resume named it as None
    args.sampling_k = schedule.k
    return ScheduledSampler(schedule)


def stored_k(args: argparse.Namespace, train: dict) -> float | None:
    """run.json's ``train["sampling_k"]``, an older release's ``null`` (written when no
    --sampling-k was given) resolved to the k its schedule used, the default :func:`sampler_of`
    applies (``None`` where the schedule has no k: teacher, linear)."""
    from rnnkit.train import TeacherForcingSchedule

    k, kind = train.get("sampling_k"), train.get("sampling")
    if k is not None or kind not in ("exponential", "inverse_sigmoid"):
        return k
    return TeacherForcingSchedule(
        kind, k=getattr(args, "inverse_sigmoid_k", None) if kind == "inverse_sigmoid" else None
    ).k
