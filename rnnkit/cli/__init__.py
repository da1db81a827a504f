"""The ``rnnkit`` command line (also ``python -m rnnkit``).

A thin layer over the library: each command parses its flags, builds a model from
:mod:`rnnkit.tasks` and :mod:`rnnkit.arch`, and trains it with :class:`rnnkit.train.Trainer`.

    rnnkit train charlm|forecast|classify|tag|seq2seq|memory [options] --out DIR
    rnnkit sample --checkpoint DIR [--prime TEXT] [--temperature T] [--length N] [--seed S]
    rnnkit eval   --checkpoint DIR --data FILE
    rnnkit predict --checkpoint DIR [--input FILE]   (forecast, classify, tag, seq2seq runs)

Bad arguments and bad files print one line ``rnnkit: error: ...`` on stderr and exit
with status 2 (usage) or 1 (anything else); set ``RNNKIT_DEBUG=1`` for the traceback. Under
torchrun an error the ranks raise alike, decided together (:func:`rnnkit.train.distributed.on_every_rank`),
is printed by rank 0 alone; any other by each rank that has it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rnnkit.train.distributed import finish_process

__all__ = ["main", "build_parser", "CLIError"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is an exception (one line, no usage dump)."""

    def error(self, message: str):  # type: ignore[override]
        where = self.prog.removeprefix("rnnkit").strip()
        raise CLIError(f"{where + ': ' if where else ''}{message} (see {self.prog} --help)", code=2)


def build_parser() -> argparse.ArgumentParser:
    from rnnkit import __version__
    from rnnkit.cli import charlm, predict, tasks

    parser = _Parser(
        prog="rnnkit",
        description="Train and use recurrent networks on real and synthetic data.",
        epilog="Run 'rnnkit COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    train = sub.add_parser("train", help="train a model on a task", description="Train a model on a task.")
    tsub = train.add_subparsers(dest="task", metavar="TASK", required=True)
    charlm.add_train_parser(tsub)
    tasks.add_train_parsers(tsub)
    charlm.add_use_parsers(sub)
    predict.add_predict_parser(sub)
    from rnnkit import diagnostics, study

    d = sub.add_parser(
        "diagnose",
        help="gradient-flow and memory diagnostics of a recurrent model",
        description="Gradient flow through time, the recurrent spectrum, gate activity and the memory "
        "horizon of recurrent cells (--variants) or a trained run's model (--checkpoint), as PNGs and a "
        "summary in --out. See docs/diagnostics.md.",
    )
    diagnostics.add_arguments(d)
    d.set_defaults(func=diagnostics.run)
    s = sub.add_parser(
        "study",
        help="rerun a textbook comparison of recurrent architectures",
        description="Rerun a paper's comparison of recurrent architectures on a budget: a grid of "
        "architectures x trials with one shared random hyperparameter search, reported beside the "
        "paper's numbers (results.md, boxplot.png); a rerun resumes it. See docs/study.md.",
    )
    study.add_arguments(s)
    s.set_defaults(func=study.run)
    return parser


def _commands(parser: argparse.ArgumentParser, name: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command of ``parser`` by name (``"train forecast"``, ``"predict"``), its leaves only."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                found.update(_commands(p, f"{name} {sub}".strip()) or {f"{name} {sub}".strip(): p})
    return found


def _unrecognized(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> str:
    """The error of arguments the command does not take, naming the commands that take a flag."""
    commands = _commands(parser)
    # the command given: its parser's func (args.task is memory's --task too)
    where = next((c for c, p in commands.items() if p._defaults.get("func") is getattr(args, "func", 0)), "")
    see = f"(see {' '.join(('rnnkit', where)).strip()} --help)"
    for token in extra:
        flag = token.split("=", 1)[0]
        owners = [c for c, p in commands.items() if c != where and flag in p._option_string_actions]
        if token.startswith("--") and owners:
            return f"{where}: {flag} is not a flag of {where}; it is one of {', '.join(owners)} {see}"
    return f"{where + ': ' if where else ''}unrecognized arguments: {' '.join(extra)} {see}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _resume_hint(args: argparse.Namespace | None) -> str:
    """What the line of an interrupted ``rnnkit train`` adds when its ``--out`` holds a checkpoint:
    that ``--resume`` goes on from it (the steps after it are lost; it names the step); else ``""``."""
    from rnnkit.train import latest_checkpoint

    if args is None or getattr(args, "command", None) != "train" or not getattr(args, "out", None):
        return ""
    try:
        ckpt = latest_checkpoint(os.path.join(args.out, "checkpoints"))
    except OSError:  # (a hint: the interrupt is what to report)
        return ""
    if ckpt is None:
        return ""
    step = ckpt.name.removeprefix("step-").lstrip("0") or "0"
    return f"; the same command with --resume continues from the last checkpoint ({ckpt}, step {step})"


def _error(exc: BaseException) -> None:
    """``rnnkit: error: ...`` on stderr, but not on a rank other than 0 for an error every rank
    raised alike (rank 0 prints it; its message is the one with the cause)."""
    if getattr(exc, "every_rank", False) and int(os.environ.get("RANK", "0") or 0) != 0:
        return
    print(f"rnnkit: error: {_one_line(exc)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status
    (a rank of a ``torchrun`` job leaves with it instead: :func:`rnnkit.train.finish_process`)."""
    return finish_process(_run(argv))


def _run(argv: Sequence[str] | None) -> int:
    from rnnkit.cli.common import run_train

    debug = os.environ.get("RNNKIT_DEBUG", "") not in ("", "0")
    args = None
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # (argparse's own error named neither the command nor whose flag it is)
            raise CLIError(_unrecognized(parser, args, extra), code=2)
        if getattr(args, "cuda_graphs", False) and not str(args.device).startswith("cuda"):
            raise CLIError(f"--cuda-graphs needs a CUDA --device, got {args.device}", code=2)
        result = run_train(args) if args.command == "train" else args.func(args)
        return int(result or 0)
    except CLIError as e:
        _error(e)
        return e.code
    except SystemExit as e:  # --help / --version
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:  # (torchrun sends Ctrl-C to every rank: rank 0 says it, once)
        if int(os.environ.get("RANK", "0") or 0) == 0:
            print(f"rnnkit: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, ImportError) as e:
        if debug:
            raise
        _error(e)
        return 1
