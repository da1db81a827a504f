"""Callbacks: progress bar, metric files (JSONL, CSV), TensorBoard, loss-curve PNG.

The trainer calls callbacks on rank 0 only. Hooks receive the trainer and a ``logs``
dict: training rows ``{"split": "train", "step", "epoch", "loss", "ppl", "lr",
"tokens_per_s", "grad_norm", "seq_len", "elapsed_s"}`` (loss averaged per token over the
last ``log_every`` steps: steps without a target stay out; NaN if none had one; ``tokens_per_s``
their targets over their training time, validations and checkpoint writes left out) and
validation rows ``{"split": "val", "step", "epoch", "loss", "ppl"}`` (``"ppl"`` only when
``trainer.perplexity``: the loss is a negative log-likelihood). ``metrics.jsonl`` is strict
JSON, one row a line: a non-finite value (a diverged loss) is ``null`` there and the row's
``"nonfinite"`` maps its key to ``"nan"``, ``"inf"`` or ``"-inf"``; :func:`read_metrics` reads
the rows back with those floats.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import numbers
import os
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rnnkit.train.plots import plot_loss_curve
from rnnkit.train.strictjson import (  # noqa: F401 - re-exported: their public path was this module
    metrics_line,
    read_metrics,
    restore_record,
    restore_row,
    strict_record,
    strict_row,
)

if TYPE_CHECKING:
    from rnnkit.train.config import TrainConfig
    from rnnkit.train.trainer import Trainer

__all__ = [
    "Callback",
    "ProgressBar",
    "JSONLLogger",
    "CSVLogger",
    "TensorBoardLogger",
    "LossCurvePlot",
    "tensorboard_available",
    "default_callbacks",
    "metrics_line",
    "read_metrics",
]

log = logging.getLogger("rnnkit.train")


class Callback:
    """Base class: override the hooks you need. Set ``trainer.should_stop = True`` to stop
    (after the current step; ``fit()``'s ``stop_reason`` is then ``"callback"`` unless the
    callback also set ``trainer.stop_reason``). Under DDP the hooks run on rank 0 alone: a stop
    it asks for (with its reason) stops every rank at the same step, and the learning rates it
    sets (``trainer.optimizer.param_groups[i]["lr"]``) reach every rank after the hook. Any other
    change of training state (weights, other optimizer settings) would stay on rank 0 and make
    the ranks drift apart: a callback must not make one."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Once ``fit()`` starts; once it returns, ``on_fit_end`` follows however fit ends."""

    def on_step_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        """Every step; ``logs`` has this step's ``loss`` (NaN: it had no target), ``tokens``, ``seq_len``."""

    def on_log(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        """Every ``log_every`` steps with averaged training metrics."""

    def on_validation_end(self, trainer: Trainer, logs: dict[str, Any]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


class ProgressBar(Callback):
    """tqdm bar with loss and tokens/s. ``enabled=None``: only when stderr is a TTY."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.expected_steps(),
            initial=trainer.step,
            disable=not self.enabled,
            unit="step",
            dynamic_ncols=True,
        )

    def on_step_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{logs['loss']:.3f}", tok_s=f"{logs['tokens_per_s']:.0f}", refresh=False
            )

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _drop_rows_after(path: Path, trainer: Trainer, read_key, render) -> None:
    """A resumed run redoes what came after its checkpoint: drop the old rows of that.

    Rows of earlier steps stay; of the checkpoint's own step only those in its ``history``
    (a validation run after the checkpoint of its step is not there, and the resumed run writes
    it again), and those of its ``history`` the file lacks (a crash cut them off) are written
    again from it (``render(row)``: the line). ``read_key(line)`` gives ``(split, step)``, or
    ``None`` for a line that is no row (a header): it stays. A last line without its newline is a
    row the crash cut off: dropped, not glued to the next."""
    if not path.is_file():
        return
    step = trainer.step
    at_step = [r for r in trainer.history if r["step"] == step]
    saved = Counter(r["split"] for r in at_step)
    # bytes decoded, not read_text: its universal newlines turned metrics.csv's CRLF rows into LF
    lines = path.read_bytes().decode("utf-8").splitlines(keepends=True)
    kept = []
    for ln in lines:
        if not ln.endswith("\n"):  # a row cut by a crash (or a full disk): the next one would join it
            continue
        key = read_key(ln)
        if key is not None and key[1] == step:
            saved[key[0]] -= 1
        if key is None or key[1] < step or (key[1] == step and saved[key[0]] >= 0):
            kept.append(ln)
    for split, n in saved.items():
        if n > 0:  # rows of the checkpoint's step the file lacks (a crash cut them): its last n
            kept += [render(r) for r in [r for r in at_step if r["split"] == split][-n:]]
    if kept != lines:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8", newline="")
        os.replace(tmp, path)


class JSONLLogger(Callback):
    """Append one JSON object per log/validation row to ``path`` (flushed each row; strict JSON:
    :func:`metrics_line`). A new run starts the file afresh, a resumed one keeps the rows before
    its checkpoint; one going on from another directory's checkpoint (``Trainer.load``) starts it
    afresh with the checkpoint's ``history``: the file holds the rows ``fit()`` returns."""

    newline: str | None = None  # open()'s: the platform's line ends
    line = staticmethod(metrics_line)  # a row as a line of the file

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.file = None

    @staticmethod
    def key_of(line: str) -> tuple[str, int] | None:
        """A line's row ``(split, step)``; ``None`` for a line that is no row."""
        try:
            row = json.loads(line)
            return str(row["split"]), int(row["step"])
        except (ValueError, KeyError, TypeError):
            return None

    def header(self) -> None:
        """What a new file starts with (the CSV's column names; nothing here)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        elsewhere = trainer._loaded_elsewhere()
        if trainer.step > 0 and not elsewhere:
            _drop_rows_after(self.path, trainer, self.key_of, self.line)
        else:
            # a new run, or one going on from another directory's checkpoint (a run of its own here,
            # as the trainer takes it): an earlier run's rows in this file would mix with its own
            self.path.unlink(missing_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", encoding="utf-8", newline=self.newline)  # noqa: SIM115 (on_fit_end)
        try:
            if new:
                self.header()
            if elsewhere:  # its rows up to the checkpoint (from its history): the file holds fit()'s history
                for row in trainer.history:
                    self._write(row)
        except BaseException:  # not started, so fit() will not end it: close the file here
            self.on_fit_end(trainer)
            raise

    def _write(self, logs: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(self.line(logs))
            self.file.flush()

    def on_log(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self._write(logs)

    def on_validation_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self._write(logs)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class CSVLogger(JSONLLogger):
    """Same rows as :class:`JSONLLogger`, as CSV with fixed columns (train and val rows)."""

    FIELDS = (
        "split",
        "step",
        "epoch",
        "loss",
        "ppl",
        "lr",
        "tokens_per_s",
        "grad_norm",
        "seq_len",
        "elapsed_s",
    )

    newline = ""  # the csv module's own line ends (CRLF)

    @staticmethod
    def key_of(line: str) -> tuple[str, int] | None:
        parts = line.split(",")
        return (parts[0], int(parts[1])) if len(parts) > 1 and parts[1].isdigit() else None

    def header(self) -> None:
        csv.DictWriter(self.file, self.FIELDS).writeheader()

    @classmethod
    def line(cls, row: dict[str, Any]) -> str:  # type: ignore[override]
        """``row`` as a line of the file (its :attr:`FIELDS`, as ``csv.DictWriter`` writes it)."""
        buf = io.StringIO()
        csv.DictWriter(buf, cls.FIELDS, extrasaction="ignore").writerow(row)
        return buf.getvalue()


def tensorboard_available() -> bool:
    """True when ``torch.utils.tensorboard`` imports (the ``tensorboard`` package is there)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _scalar(v: Any) -> float | None:
    """``v`` as a TensorBoard scalar: a real number (numpy's too; a bool as 0 or 1) or a 0-d real
    tensor as a float; ``None`` for anything else (a str, ``None``), which has no curve. (Only
    Python's numbers were taken: a callback's ``np.float32`` or tensor metric was left out silently.)"""
    if isinstance(v, torch.Tensor):
        return float(v) if v.dim() == 0 and not v.is_complex() else None
    return float(v) if isinstance(v, numbers.Real) else None


class TensorBoardLogger(Callback):
    """Scalars to TensorBoard. Raises ``ImportError`` with a hint when it is not installed;
    the trainer only adds it when :func:`tensorboard_available`. The writer (which creates its
    event file) opens at fit's start, once the trainer holds ``out_dir``'s lock: a run refused
    there must leave nothing in it; it closes at fit's end. It opens with ``purge_step`` at the
    trainer's step: a resumed run hides the stopped run's points from there on, a new one (step 0,
    or going on from another directory's checkpoint, whose ``history`` it writes) all the points
    of an earlier run in ``log_dir``. Every point shows once, as in ``metrics.jsonl``. A row's values
    but ``split``, ``step`` and ``epoch`` are its scalars (``split/key``): numbers, numpy's and 0-d
    tensors as floats; others (a str, ``None``) are left out."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "TensorBoardLogger needs the 'tensorboard' package (pip install tensorboard)"
            ) from e
        self.log_dir, self._writer_class = str(log_dir), SummaryWriter
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        # A new run (step 0) into a log_dir holding an earlier run's event files: purge_step=0 hides
        # all their points (without it TensorBoard showed both runs' curves as one, zigzagging). So
        # for one going on from another directory's checkpoint, whose points to there are its history.
        if trainer.step == 0 or trainer._loaded_elsewhere():
            self.writer = self._writer_class(log_dir=self.log_dir, purge_step=0)
            for row in trainer.history:
                self._write(row)
            return
        # A resumed run writes again what came after its checkpoint, which the stopped run may have
        # written already: TensorBoard hides the earlier events from purge_step on (each point once,
        # as _drop_rows_after keeps metrics.jsonl), and the rows of the step itself come from history
        # (its epoch-end validation, not there, is written again by the run).
        self.writer = self._writer_class(log_dir=self.log_dir, purge_step=trainer.step)
        for row in trainer.history:
            if row["step"] == trainer.step:
                self._write(row)

    def _write(self, logs: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in logs.items():
            value = _scalar(v)
            if k not in ("split", "step", "epoch") and value is not None:
                self.writer.add_scalar(f"{logs['split']}/{k}", value, logs["step"])

    def on_log(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self._write(logs)

    def on_validation_end(self, trainer: Trainer, logs: dict[str, Any]) -> None:
        self._write(logs)
        if self.writer is not None:
            self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class LossCurvePlot(Callback):
    """Write the loss curve of ``trainer.history`` to a PNG at the end of fit."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.history:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            plot_loss_curve(trainer.history, self.path)


def default_callbacks(cfg: TrainConfig) -> list[Callback]:
    """What the trainer adds on rank 0: a progress bar, and with ``out_dir`` the metric
    files, TensorBoard (when installed and enabled) and the loss-curve PNG."""
    cbs: list[Callback] = [ProgressBar(cfg.progress)]
    if cfg.out_dir is not None:
        out = Path(cfg.out_dir)
        cbs += [JSONLLogger(out / "metrics.jsonl"), CSVLogger(out / "metrics.csv")]
        if cfg.tensorboard and tensorboard_available():
            cbs.append(TensorBoardLogger(out / "tensorboard"))
        elif cfg.tensorboard:
            log.info("tensorboard is not installed: no TensorBoard logging")
        if cfg.plot:
            cbs.append(LossCurvePlot(out / "loss.png"))
    return cbs
