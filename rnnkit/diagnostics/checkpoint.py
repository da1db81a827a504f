"""Checkpoint mode of ``rnnkit diagnose``: find the weights, and the architecture.

:func:`load_weights` loads ``model.safetensors`` into an already built recurrent layer.
:func:`checkpoint_layer` builds that layer: its family, width, depth and options come from
the explicit flags, else from the ``run.json`` that ``rnnkit train`` writes beside its
``checkpoints/`` (``model.arch``: ``cell``, ``hidden``, ``layers``, ``options``), else from
the defaults; the input width and the direction count, which ``run.json`` does not hold
for every task, are read off the checkpoint's tensor shapes unless given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor, nn

from .memory import FAMILIES, Variant

RUN_FILE = "run.json"


def _step_key(d: Path) -> tuple[int, str]:
    """Sort key of a ``step-*`` checkpoint folder: its step number (names without one first)."""
    tail = d.name[len("step-") :]
    return (int(tail), d.name) if tail.isdigit() else (-1, d.name)


def weights_file(path: str | os.PathLike) -> Path:
    """``model.safetensors`` of ``path``: a ``.safetensors`` file, a checkpoint directory, a
    checkpoint root (its ``latest`` pointer, else its highest ``step-*``; the pointer file itself
    too) or a run directory (its ``checkpoints/`` root). ``FileNotFoundError``: ``path`` does not
    exist, or holds no weights; ``ValueError``: ``path`` is a file other than ``.safetensors``."""
    p = Path(path)
    if not p.exists():  # (not "no model.safetensors found at": there is nothing there at all)
        best = " (a run's best/ comes from rnnkit train --save-best)" if p.name == "best" else ""
        raise FileNotFoundError(f"{path} does not exist{best}")
    if p.name == "latest" and p.is_file():  # the pointer file was read as safetensors ("header too large")
        p = p.parent
    if p.is_dir() and not (p / "model.safetensors").is_file() and (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if p.is_dir() and not (p / "model.safetensors").is_file():
        latest = p / "latest"
        # by step number: the trainer's names are zero-padded, but a step-10 beside a step-9 is not
        steps = sorted((d for d in p.glob("step-*") if (d / "model.safetensors").is_file()), key=_step_key)
        if latest.is_file() and (p / latest.read_text().strip() / "model.safetensors").is_file():
            p = p / latest.read_text().strip()
        elif steps:
            p = steps[-1]
    f = p / "model.safetensors" if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"no model.safetensors found at {path}")
    if f.suffix != ".safetensors":  # another file of a checkpoint (state.json): safetensors' raw error
        sibling = f.parent / "model.safetensors"
        hint = f" (its checkpoint's weights are {sibling})" if sibling.is_file() else ""
        raise ValueError(
            f"{f} is not a weights file: expected a .safetensors file (model.safetensors), a checkpoint "
            f"directory, a checkpoint root or a run directory{hint}"
        )
    return f


def _prefixes(tensors: dict[str, Tensor], want: set[str]) -> list[str]:
    """Key prefixes (``""`` or ending in ``.``) under which all of ``want`` are found, shortest
    first, then alphabetically: a model with several such layers (a seq2seq's ``decoder.`` and
    ``encoder.``) gives the same choice in every process (a set's order depends on the hash seed)."""
    found = sorted({k[: len(k) - len(w)] for k in tensors for w in want if k.endswith(w)},
                   key=lambda pre: (len(pre), pre))  # fmt: skip
    return [pre for pre in found if (not pre or pre.endswith(".")) and all(pre + w in tensors for w in want)]


def _load(module: nn.Module, path: str | os.PathLike) -> tuple[nn.Module, str, list[str]]:
    """:func:`load_weights`, also returning the prefix used and every candidate prefix."""
    from rnnkit.train.serialize import load_tensors  # (a damaged file: an error naming it)

    f = weights_file(path)
    tensors = load_tensors(f)
    want, state = set(module.state_dict()), module.state_dict()
    pres = _prefixes(tensors, want)
    first_bad: list[str] = []
    for pre in pres:  # the first prefix whose shapes fit (an encoder and a decoder of other widths)
        sub = {k[len(pre) :]: v for k, v in tensors.items() if k.startswith(pre)}
        bad = [f"{k}: expected {tuple(state[k].shape)}, got {tuple(sub[k].shape)}"
               for k in sorted(want) if sub[k].shape != state[k].shape]  # fmt: skip
        if not bad:
            module.load_state_dict({k: sub[k] for k in want})
            return module, pre, pres
        first_bad = first_bad or bad
    if first_bad:
        raise ValueError(f"{f} has weights of another size for this module: " + "; ".join(first_bad))
    raise ValueError(
        f"{f} does not hold the weights of this module: expected keys {sorted(want)} (optionally under a "
        f"common prefix), found {sorted(tensors)[:12]}"
    )


def load_weights(module: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load ``model.safetensors`` of a checkpoint (see :func:`weights_file`) into an already
    built ``module``. Keys may carry a prefix (a recurrent layer saved inside a larger
    model, ``rnn.weight_ih_l0``): the prefix under which all of ``module``'s keys are found
    is stripped. With several such prefixes (a seq2seq's ``decoder.`` and ``encoder.``) the
    first whose shapes fit, shortest then alphabetically."""
    return _load(module, path)[0]


def find_run(path: str | os.PathLike) -> dict | None:
    """The ``run.json`` of ``path`` (a run directory, its ``checkpoints/`` or a ``step-*``), or ``None``."""
    p = Path(path)
    for cand in (p, p.parent, p.parent.parent):
        f = cand / RUN_FILE
        if f.is_file():
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{f} is not valid JSON: {e}") from None
            if isinstance(doc, dict):
                _check_version(doc, f)
            return doc if isinstance(doc, dict) else None
    return None


def _check_version(doc: dict, f: Path) -> None:
    """The CLI's rule for ``run.json``'s ``format_version`` (a newer run's hints may mean other
    things), as a ValueError: ``diagnose`` read them from a newer run without a word."""
    from rnnkit.cli import CLIError
    from rnnkit.cli.rundir import check_run_version

    try:
        check_run_version(doc, f)
    except CLIError as e:
        raise ValueError(str(e)) from None


def _infer_shape(family: str, hidden: int, layers: int, options: dict, path) -> tuple[int, bool]:
    """``(input_size, bidirectional)`` of the layer stored in the checkpoint, from its shapes."""
    from safetensors import SafetensorError, safe_open

    probe = Variant(family, family, {"num_layers": layers, **options}).build(1, hidden)
    want = set(probe.state_dict())
    f = weights_file(path)
    try:
        with safe_open(str(f), "pt") as fh:
            shapes = {k: fh.get_slice(k).get_shape() for k in fh.keys()}
    except SafetensorError as e:  # it names no file (a truncated one gave a traceback in `diagnose`)
        raise ValueError(f"{f}: not a readable safetensors file (truncated or damaged?): {e}") from None
    pres = _prefixes(shapes, want)  # type: ignore[arg-type]
    if not pres:
        raise ValueError(
            f"{f} holds no {family} layer of {layers} layer(s) (looked for keys {sorted(want)}, found "
            f"{sorted(shapes)[:12]}); pass --cell/--hidden-size/--num-layers/--option to describe it"
        )
    pre = pres[0]
    key = "B_re_l0" if family == "lru" else "weight_ih_l0"
    n_in = int(shapes[pre + key][1]) // int(getattr(probe, "window", 1) if family == "qrnn" else 1)
    bidir = all(pre + k + "_reverse" in shapes for k in want if k.endswith("_l0"))
    return n_in, bidir


def checkpoint_layer(args) -> tuple[Variant, nn.Module, str]:
    """The layer of ``args.checkpoint`` with its weights loaded: ``(variant, module, note)``.

    Precedence: explicit flags (``--cell``, ``--hidden-size``, ``--num-layers``,
    ``--input-size``, ``--option``), then ``run.json``, then the checkpoint's shapes (input
    size, bidirectional), then the defaults (``lstm``, 16 units, 1 layer)."""
    run = find_run(args.checkpoint) or {}
    arch = run.get("model", {}).get("arch", {}) if isinstance(run.get("model"), dict) else {}
    family = str(args.family or arch.get("cell") or "lstm").lower()
    if family.startswith("conv-"):  # the recurrent layer behind a convolution front end
        family = family[len("conv-") :]
    if family == "tcn":
        raise ValueError("the checkpoint's model is a TCN: it has no recurrent layer to diagnose")
    if family not in FAMILIES:
        raise ValueError(f"--cell must be one of {sorted(FAMILIES)}, got {family!r}")
    hidden = args.hidden_size or int(arch.get("hidden") or 16)
    layers = args.num_layers or int(arch.get("layers") or 1)
    from .memory import parse_variant

    # the run's options describe its cell, whatever the case --cell is typed in (LSTM dropped them)
    # and whether it names a conv-<family> run's recurrent family (lstm against conv-lstm dropped them)
    stored_family = str(arch.get("cell")).lower().removeprefix("conv-")
    same = not args.family or family == stored_family
    stored = dict(arch.get("options") or {}) if same else {}
    options = {**stored, **parse_variant(f"{family}:" + ",".join(args.option)).options}
    n_in, bidir = _infer_shape(family, hidden, layers, options, args.checkpoint)  # directions: always
    if args.input_size is not None:
        n_in = args.input_size
    if bidir:
        options = {"bidirectional": True, **options}
    v = Variant(family, family, {"num_layers": layers, **options})
    module, pre, pres = _load(v.build(n_in, hidden), args.checkpoint)
    module.eval()
    src = "run.json" if arch else "flags"
    bi = ", bidirectional" if v.options.get("bidirectional") else ""
    note = f"{family}, input {n_in}, hidden {hidden}, {layers} layer(s){bi} (architecture from {src})"
    others = ", ".join(repr(o) for o in pres if o != pre)
    if pre:  # say which layer of the model this is, and which others there were
        note += f"; the layer under {pre!r}" + (f" (also in the checkpoint: {others})" if others else "")
    return v, module, note
