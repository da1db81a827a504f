"""The teacher-forcing / scheduled-sampling flags (Bengio et al. 2015) of the decoding tasks
(``rnnkit train forecast|seq2seq``) and the sampler they describe."""

from __future__ import annotations

import argparse

from rnnkit.arch import positive_int
from rnnkit.cli.common import Given

__all__ = ["SAMPLING", "add_sampling_arguments", "sampler_of"]

SAMPLING = ("teacher", "linear", "exponential", "inverse_sigmoid")


def add_sampling_arguments(p: argparse.ArgumentParser, default: str) -> None:
    """``--sampling``, ``--sampling-k``, ``--sampling-steps``, ``--sampling-min`` (default kind
    ``default``)."""
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
        type=float,
        default=None,
        action=Given,
        help="k of exponential (<1) / inverse_sigmoid (>=1)",
    )
    a(
        "--sampling-steps",
        type=positive_int,
        default=1000,
        action=Given,
        help="linear: steps to reach the floor",
    )
    a("--sampling-min", type=float, default=0.0, action=Given, help="linear/exponential floor of P(truth)")


def sampler_of(args: argparse.Namespace):
    """The :class:`~rnnkit.train.ScheduledSampler` of the ``--sampling*`` flags."""
    from rnnkit.train import ScheduledSampler, TeacherForcingSchedule

    if args.sampling == "teacher":
        return ScheduledSampler(1.0)
    return ScheduledSampler(
        TeacherForcingSchedule(
            args.sampling, k=args.sampling_k, steps=args.sampling_steps, end=args.sampling_min
        )
    )
