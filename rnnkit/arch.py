"""Build a recurrent stack from command-line style options (shared by every CLI task).

``--cell`` picks the family, ``--opt key=value`` passes any cell or layer option (the cell
zoo and the regularizers), the common ones have their own flags. Everything ends up as
keyword arguments of ``rnnkit.RNN``/``LSTM``/``GRU`` (or of the parallel-in-time layers), so
the CLI never knows a cell's internals.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Callable
from typing import Any

from torch import nn

import rnnkit


def recurrent_families() -> dict[str, Callable[..., nn.Module]]:
    """Name -> layer class, for every family the installed rnnkit provides."""
    fams: dict[str, Callable[..., nn.Module]] = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}
    for name in ("MinGRU", "MinLSTM", "QRNN", "LRU"):
        if hasattr(rnnkit, name):
            fams[name.lower()] = getattr(rnnkit, name)
    return fams


def parse_opt(text: str) -> tuple[str, Any]:
    """``"norm=layer"`` -> ``("norm", "layer")``; values are Python literals when they parse."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--opt expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip().replace("-", "_"), value


def add_arch_arguments(
    p: argparse.ArgumentParser, *, hidden: int = 256, layers: int = 2, cell: str = "lstm"
) -> None:
    g = p.add_argument_group("architecture")
    g.add_argument(
        "--cell", default=cell, help=f"recurrent family: {', '.join(recurrent_families())} (default {cell})"
    )
    g.add_argument("--hidden", type=int, default=hidden, help=f"hidden units per layer (default {hidden})")
    g.add_argument("--layers", type=int, default=layers, help=f"recurrent layers (default {layers})")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout between layers (torch semantics)")
    g.add_argument(
        "--opt", action="append", type=parse_opt, default=[], metavar="KEY=VALUE",
        help="any cell or layer option, e.g. --opt peephole=True --opt norm=layer --opt zoneout=0.1",
    )  # fmt: skip


def arch_config(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-able architecture of parsed ``args`` (stored in checkpoints)."""
    return {"cell": args.cell, "hidden": args.hidden, "layers": args.layers, "dropout": args.dropout,
            "options": dict(args.opt)}  # fmt: skip


def build_recurrent(config: dict[str, Any], input_size: int, **extra: Any) -> nn.Module:
    """``rnnkit.<Family>(input_size, hidden, layers, dropout=..., **options, **extra)``."""
    fams = recurrent_families()
    cell = config["cell"]
    if cell not in fams:
        raise ValueError(f"unknown cell {cell!r}; choose one of {', '.join(fams)}")
    kwargs = {**config.get("options", {}), **extra}
    if config.get("dropout"):
        kwargs["dropout"] = config["dropout"]
    try:
        return fams[cell](input_size, config["hidden"], num_layers=config["layers"], **kwargs)
    except TypeError as e:  # an unknown option: say which family rejected it
        raise ValueError(f"--cell {cell} does not accept these options {sorted(kwargs)}: {e}") from e
