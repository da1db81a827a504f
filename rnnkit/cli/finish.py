"""The end of a ``rnnkit train`` run: the final validation row, ``loss.png``,
``results.json``, the summary lines (with ``--save-best``, where the best weights are and their
validation loss), and the line saying a resumed run has nothing left to train."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnkit.cli.common import echo
from rnnkit.cli.rundir import write_results

__all__ = ["final_validation", "finish", "describe_values", "best_weights", "finished_run_notice"]

#: What every run writes into ``--out``, in the order the summary lists them.
RUN_FILES = ("run.json", "checkpoints/", "best/", "metrics.jsonl", "metrics.csv", "loss.png", "results.json")


def describe_values(values: dict[str, Any]) -> str:
    """``{"a": 0.5, "n": 3}`` -> ``"a 0.5000, n 3"``: how the summary lines show values."""
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def final_validation(args: argparse.Namespace, trainer: Any, valid: Any) -> float:
    """The validation loss at the last step: the trainer's (``validate_at_end``, which
    :func:`~rnnkit.cli.common.make_trainer` sets: it went through the trainer's bookkeeping, best
    and patience, and is in ``metrics.jsonl``/``metrics.csv`` and the final checkpoint)."""
    rows = [r for r in trainer.history if r.get("split") == "val"]
    if not rows or rows[-1]["step"] != trainer.step:
        raise RuntimeError(f"no validation at the last step {trainer.step} (validate_at_end is off?)")
    return float(rows[-1]["loss"])


def finish(args: argparse.Namespace, trainer: Any, result: dict[str, Any], metrics: dict[str, Any],
           valid: Any = None, wrote: Sequence[str] = ()) -> dict[str, Any]:  # fmt: skip
    """End of a run: a final validation row (when the last step had none), ``loss.png``
    (every step's training loss + the validation points), ``results.json`` and a summary: why it
    stopped with ``metrics``, and every file written (:data:`RUN_FILES`, then the task's ``wrote``);
    with ``--save-best`` first the best weights' line (:func:`best_weights`), and ``results.json``
    has their ``best_valid_loss`` and ``best_step``."""
    from rnnkit.train import plot_loss_curve

    out = Path(args.out)
    if valid is not None:
        final_validation(args, trainer, valid)
    val_rows = [r for r in trainer.history if r.get("split") == "val"]
    train_rows = [{"split": "train", "step": i + 1, "loss": v} for i, v in enumerate(trainer.losses)]
    if (train_rows or val_rows) and trainer.is_main:
        plot_loss_curve(train_rows + val_rows, out / "loss.png", title=f"{out.name}: loss per step")
    if val_rows:
        metrics = {"valid_loss": val_rows[-1]["loss"], **metrics}
    doc = {"stop_reason": result["stop_reason"], "step": result["step"], "epoch": result["epoch"], **metrics}
    best = best_weights(trainer) if trainer.is_main else None
    if best is not None:
        doc.update(best_valid_loss=best["val_loss"], best_step=best["step"])
    if trainer.is_main:
        write_results(doc, out / "results.json")  # strict JSON: a NaN is null + "nonfinite"
    echo(f"stopped ({result['stop_reason']}) after {result['step']} steps{_why(trainer, result)}: "
         f"{describe_values(metrics)}")  # fmt: skip
    # (a best/ of this run only: without --save-best one there is not its own, e.g. put there by hand)
    files = [f for f in (*RUN_FILES, *wrote) if f != "best/" or trainer.config.save_best]
    listed = [f for f in files if (out / f).exists()]
    echo(f"wrote {out}/ ({', '.join(listed)})")
    return doc


def _why(trainer: Any, result: dict[str, Any]) -> str:
    """What the stop line adds to its reason: for an early stop, what the patience counted
    (``", 3 validations without a new best (--patience 3)"``); else nothing (the limit is the reason)."""
    if result["stop_reason"] != "early_stopping":
        return ""
    return f", {trainer.bad_evals} validations without a new best (--patience {trainer.config.patience})"


def best_weights(trainer: Any) -> dict[str, Any] | None:
    """With ``--save-best``, ``{"step", "val_loss"}`` of the weights in ``best/``, said in a line
    (before the summary's last two; that the run has none too; when they are not the last step's,
    that the metrics are of the last weights); else ``None``."""
    from rnnkit.train import load_checkpoint

    if not trainer.config.save_best:
        return None
    best = trainer.best_dir
    try:
        doc = load_checkpoint(best)
    except FileNotFoundError:  # no validation was a new best (a resume that turned it on, NaN losses)
        best_val = trainer.best_val
        than = f"better than the run's best ({best_val:.4f})" if math.isfinite(best_val) else "finite"
        echo(f"no best weights in {best}/: no validation loss with --save-best on was {than}")
        return None
    found = {"step": doc["step"], "val_loss": doc["state"]["val_loss"]}
    # (the run's metrics are evaluated with the weights it ended with, which best/'s are not)
    last = "" if found["step"] == trainer.step else (
        f"; the metrics below (and results.json's) are of the last weights, step {trainer.step}")  # fmt: skip
    echo(f"best weights: {best}/ (step {found['step']}, valid_loss {found['val_loss']:.4f}){last}")
    return found


def finished_run_notice(args: argparse.Namespace) -> Any:
    """A callback saying, once ``--resume`` has loaded the checkpoint, that the run is already at
    a limit given (the trainer keeps a finished run finished: it trains nothing, and said nothing)."""
    from rnnkit.train.callbacks import Callback

    class FinishedRun(Callback):
        def on_fit_start(self, trainer: Any) -> None:
            cfg, at = trainer.config, f"--resume: the run in {args.out} is at step {trainer.step}"
            if cfg.max_steps is not None and trainer.step >= cfg.max_steps:
                echo(f"{at}, already at --max-steps {cfg.max_steps}: nothing to train")
            elif cfg.max_minutes is not None and trainer.elapsed >= 60 * cfg.max_minutes:
                spent = trainer.elapsed / 60
                echo(f"{at} ({spent:.3g} minutes trained), already past --max-minutes {cfg.max_minutes:g}: "
                     "nothing to train")  # fmt: skip
            elif cfg.patience is not None and trainer.bad_evals >= cfg.patience:
                echo(f"{at}, stopped early: {trainer.bad_evals} validations without a new best, --patience "
                     f"{cfg.patience}: nothing to train (a larger --patience goes on)")  # fmt: skip
            elif trainer.epoch >= cfg.max_epochs:
                echo(f"{at} (epoch {trainer.epoch}), already at --epochs {cfg.max_epochs}: nothing to train")

    return FinishedRun()
