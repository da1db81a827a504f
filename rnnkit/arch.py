"""Build a recurrent stack from command-line style options (shared by every CLI task).

``--arch`` (alias ``--cell``) picks the family: a recurrent one (``lstm``, ``gru``, ``rnn``
and whatever else the installed rnnkit provides), ``tcn`` (a dilated causal convolution
stack, :class:`rnnkit.baselines.TCN`) or ``conv-<family>`` (a causal convolution front end
feeding that recurrent family, :class:`rnnkit.baselines.ConvRecurrent`). ``--opt key=value``
passes any cell or layer option (the cell zoo and the regularizers), the common ones have
their own flags. Everything ends up as
keyword arguments of ``rnnkit.RNN``/``LSTM``/``GRU`` (or of the parallel-in-time layers), so
the CLI never knows a cell's internals.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from collections.abc import Callable
from typing import Any

from torch import nn

import rnnkit
from rnnkit import _checks
from rnnkit.baselines import TCN, ConvRecurrent

__all__ = [
    "Given",
    "add_arch_arguments",
    "arch_config",
    "arch_names",
    "build_recurrent",
    "describe_arch",
    "parse_opt",
    "recurrent_families",
]


def recurrent_families() -> dict[str, Callable[..., nn.Module]]:
    """Name -> layer class, for every family the installed rnnkit provides."""
    fams: dict[str, Callable[..., nn.Module]] = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}
    for name in ("MinGRU", "MinLSTM", "QRNN", "LRU"):
        if hasattr(rnnkit, name):
            fams[name.lower()] = getattr(rnnkit, name)
    return fams


def arch_names() -> list[str]:
    """Every ``--arch`` value: the recurrent families, ``tcn`` and ``conv-<family>``."""
    fams = list(recurrent_families())
    return [*fams, "tcn", *(f"conv-{f}" for f in fams)]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def probability(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {v}")
    return v


def parse_value(raw: str) -> Any:
    """A Python literal when ``raw`` is one (``True``, ``0.5``, ``'x'``, ``(0.1, 0.05)``), else
    ``raw`` itself."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


#: JSON's spellings, which a command line user types as readily as Python's (``diagnose
#: --option`` reads them too).
_JSON_WORDS = {"true": True, "false": False, "null": None}


def parse_opt(text: str) -> tuple[str, Any]:
    """``"norm=layer"`` -> ``("norm", "layer")``; values are Python literals when they parse,
    or JSON's ``true`` / ``false`` / ``null``."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--opt expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():  # else refused later as an option '' (or "does not take --opt ;")
        raise argparse.ArgumentTypeError(f"--opt expects key=value, got no key in {text!r}")
    value = parse_value(raw)
    if value is raw and raw.strip() in _JSON_WORDS:
        value = _JSON_WORDS[raw.strip()]
    return key.strip().replace("-", "_"), value


class Given(argparse.Action):
    """``store``, recording the option as given on the command line (in ``args.given``): a resume
    reports the training flags typed differently, not the parser's defaults; ``--dropout 0`` is
    told from the default (:func:`arch_config`)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


class GivenAppend(argparse._AppendAction):
    """``append``, recording the option as given (in ``args.given``) as :class:`Given` does."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        namespace.given = {*getattr(namespace, "given", ()), self.dest}


def add_arch_arguments(
    p: argparse.ArgumentParser,
    *,
    hidden: int | None = 256,
    layers: int = 2,
    cell: str = "lstm",
    dropout: float | None = 0.0,
    by: str = "",
    dropout_by: str | None = None,
    dropout_also: str = "",
) -> None:
    """The architecture flags. ``hidden`` / ``dropout`` ``None``: unset by default (the
    command decides later); ``by`` (``dropout_by`` for ``--dropout``, if given) says in their
    help what decides. ``dropout_also``: where else the command's model applies ``--dropout``."""
    g = p.add_argument_group("architecture")
    g.add_argument(
        "--arch", "--cell", dest="cell", default=cell, metavar="ARCH", action=Given,
        help=f"{', '.join(arch_names())} (default {cell})",
    )  # fmt: skip
    g.add_argument(
        "--hidden", type=positive_int, default=hidden, action=Given,
        help=f"hidden units per layer (default {by if hidden is None else hidden})",
    )  # fmt: skip
    g.add_argument(
        "--layers",
        type=positive_int,
        default=layers,
        action=Given,
        help=f"recurrent layers (default {layers})",
    )
    g.add_argument(
        "--dropout", type=probability, default=dropout, action=Given,
        help=f"dropout between layers (torch semantics, as --opt dropout=P){dropout_also} (default "
        f"{(by if dropout_by is None else dropout_by) if dropout is None else dropout})",
    )  # fmt: skip
    g.add_argument(
        "--opt", action=GivenAppend, type=parse_opt, default=[], metavar="KEY=VALUE",
        help="any cell or layer option, e.g. --opt peephole=True --opt norm=layer --opt zoneout=0.1",
    )  # fmt: skip
    g.add_argument(
        "--kernel-size",
        type=positive_int,
        default=3,
        action=Given,
        help="tcn / conv front end kernel size (default 3)",
    )
    g.add_argument(
        "--conv-channels",
        type=positive_int,
        default=None,
        action=Given,
        help="conv front end channels (default: --hidden)",
    )
    g.add_argument(
        "--conv-layers", type=positive_int, default=1, action=Given, help="conv front end layers (default 1)"
    )


def arch_config(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-able architecture of parsed ``args`` (stored in checkpoints). ``--opt dropout=p``
    is the layers' ``dropout=`` as ``--dropout`` is (which :func:`build_recurrent` passes with
    more than one layer, over the option): given both, they must agree (``--dropout 0`` too:
    :class:`Given` tells it from the default)."""
    options = dict(args.opt)
    given = "dropout" in getattr(args, "given", ()) or bool(args.dropout)
    if given and options.get("dropout", args.dropout) != args.dropout:
        raise ValueError(
            f"--dropout {args.dropout} and --opt dropout={options['dropout']} disagree: both are the "
            "dropout between layers; give one"
        )
    dropout = args.dropout if given else options.get("dropout", args.dropout)  # --opt alone: the same
    config = {"cell": args.cell, "hidden": args.hidden, "layers": args.layers, "dropout": dropout,
              "options": options, "kernel_size": args.kernel_size,
              "conv_channels": args.conv_channels or args.hidden,
              "conv_layers": args.conv_layers}  # fmt: skip
    if str(args.cell).startswith("conv-") and options.get("bidirectional") is True:
        # stored with the run: runs of before it trained a causal front end behind this option,
        # and their weights must load into one (build_recurrent centres only where it is set)
        config["conv_centred"] = True
    return config


def build_recurrent(config: dict[str, Any], input_size: int, **extra: Any) -> nn.Module:
    """The sequence encoder of ``config`` (from :func:`arch_config`).

    Recurrent families: ``rnnkit.<Family>(input_size, hidden, layers, dropout=...,
    **options, **extra)``. ``tcn``: :class:`~rnnkit.baselines.TCN` with ``layers`` levels.
    ``conv-<family>``: :class:`~rnnkit.baselines.ConvRecurrent`. ``extra`` is typically
    ``batch_first=True`` and/or ``bidirectional=True`` (for the convolutions: centred,
    non-causal kernels; so is ``--opt bidirectional=true`` in a config with ``"conv_centred":
    True``, which :func:`arch_config` sets: without it, a run stored before, the front end stays
    causal). Every result is called as ``module(x, state) -> (out, state)``.
    """
    cell = config["cell"]
    if cell not in arch_names():  # (conv-tcn, conv-conv-lstm: a front end nested in another)
        raise ValueError(f"unknown --arch {cell!r}; choose one of {', '.join(arch_names())}")
    for key in ("hidden", "layers"):
        if int(config[key]) < 1:
            raise ValueError(f"--{key} must be >= 1, got {config[key]}")
    if cell == "tcn":
        options = config.get("options") or {}
        if "bidirectional" in options:  # (the generic refusal below named no arch that takes it)
            takers = [a for a in arch_names() if a != "tcn"]
            raise ValueError(
                "--arch tcn is causal and takes no --opt bidirectional (only the tagger centres its "
                f"kernels); a bidirectional encoder is one of --arch {', '.join(takers)}"
            )
        if set(options) - {"dropout"}:  # --opt dropout is --dropout (arch_config)
            raise ValueError(f"--arch tcn takes no --opt options but dropout, got {sorted(options)}")
        _check_centred_kernel(config, extra.get("bidirectional") is True)
        # config's dropout (arch_config: --opt dropout's too), which CharLM zeroes for one level
        dropout = config["dropout"] if config.get("dropout") is not None else options.get("dropout", 0.0)
        return TCN(input_size, config["hidden"], config["layers"], kernel_size=config.get("kernel_size", 3),
                   dropout=dropout, **extra)  # fmt: skip
    if cell.startswith("conv-"):
        inner = {**config, "cell": cell[len("conv-") :]}
        fb = {k: extra[k] for k in ("batch_first", "bidirectional") if k in extra}
        # --opt bidirectional=true (classify, seq2seq's encoder) is the tagger's bidirectional=True:
        # the front end centres its kernels too (it stayed causal, seeing only the past while the
        # recurrent part read both sides); a value that is not a bool is the recurrent layer's to refuse.
        # Only with arch_config's "conv_centred": a run stored before it trained a causal front end
        # (same weight shapes: centred, it would load and predict or resume other numbers silently)
        opted = (config.get("options") or {}).get("bidirectional") is True
        if "bidirectional" not in fb and opted and config.get("conv_centred") is True:
            fb["bidirectional"] = True
        _check_centred_kernel(config, fb.get("bidirectional") is True)
        return ConvRecurrent(
            input_size, lambda n: build_recurrent(inner, n, **extra),
            conv_channels=config.get("conv_channels") or config["hidden"],
            kernel_size=config.get("kernel_size", 3), conv_layers=config.get("conv_layers", 1), **fb,
        )  # fmt: skip
    fams = recurrent_families()
    options = config.get("options", {})
    params = inspect.signature(fams[cell]).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):  # the parallel-in-time layers
        unknown = sorted(k for k in options if k not in params)
        if unknown:  # (their own TypeError named no option they take, minLSTM's the class MinGRU)
            fixed = ("input_size", "hidden_size", "num_layers", "batch_first", "device", "dtype")
            takes = [k for k in params if k not in fixed]
            raise ValueError(
                f"--arch {cell} does not take --opt {', '.join(unknown)}; its options are {', '.join(takes)}"
            )
    kwargs = {k: v for k, v in {**options, **extra}.items() if k != "dropout"}
    # --dropout, else --opt dropout (arch_config: given both, they agree; runs stored before
    # that check: --dropout won); torch warns about dropout with 1 layer
    dropout = config.get("dropout") or options.get("dropout")
    if dropout is not None and (not _checks.is_real(dropout) or not 0 <= dropout <= 1):
        # checked here: with one layer it is not passed on below, so no layer would refuse it
        raise ValueError(f"--arch {cell}: --opt dropout must be a number in [0, 1], got {dropout!r}")
    if dropout and config["layers"] > 1:
        kwargs["dropout"] = dropout
    try:
        return fams[cell](input_size, config["hidden"], num_layers=config["layers"], **kwargs)
    except TypeError as e:  # an unknown option: say which family rejected it
        raise ValueError(f"--arch {cell} rejected an option: {e}") from e
    except ValueError as e:  # a bad --opt value: the layer's words name the option, not the flag
        if not any(re.match(rf"{re.escape(k)}\b", str(e)) for k in options):
            raise
        raise ValueError(f"--arch {cell}: --opt {e}") from e


def _check_centred_kernel(config: dict[str, Any], centred: bool) -> None:
    """Refuse an even ``--kernel-size`` for ``centred`` (non-causal) kernels, which pad as many steps
    on each side: the convolution's own error named no flag, and the CLI met it only at run time."""
    k = config.get("kernel_size", 3)
    if centred and _checks.is_int(k) and k % 2 == 0:
        raise ValueError(
            f"--kernel-size must be odd (1, 3, 5, ...) for the centred kernels of a bidirectional "
            f"--arch {config['cell']}, got {k}"
        )


def describe_arch(module: nn.Module) -> str:
    """One line about an encoder; for convolutions it includes the receptive field."""
    name = type(module).__name__
    n = sum(p.numel() for p in module.parameters())
    rf = getattr(module, "receptive_field", None)
    extra = f", receptive field {rf} steps" if rf is not None else ""
    return f"{name}: {n:,} parameters{extra}"
