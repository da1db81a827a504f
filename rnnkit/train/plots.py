"""Loss-curve PNG with matplotlib's Agg canvas (no pyplot: no global state, no display)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_loss_curve"]


def plot_loss_curve(
    history: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str = "loss"
) -> Path:
    """Plot train and validation loss (nats/token) against step; write a PNG to ``path``.

    ``history``: log rows with ``split`` ("train"/"val"), ``step`` and ``loss``, as kept
    in ``Trainer.history``. The file is written atomically (temp file + rename).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for split, style in (("train", "-"), ("val", "o-")):
        rows = [r for r in history if r.get("split") == split and "loss" in r]
        if rows:
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, label=split)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
