"""Atomic, pickle-free checkpoints.

A checkpoint is a directory ``<root>/step-000001234/`` holding

* ``model.safetensors`` -- the weights (``state_dict`` names; tied weights under each name);
* ``optimizer.safetensors`` -- the tensors of the optimizer and scheduler state dicts;
* ``state.safetensors`` -- tensors of the trainer state (recurrent state, averages), if any;
* ``history.jsonl`` -- the trainer's logged rows (:mod:`rnnkit.train.historylog`), in its checkpoints;
* ``state.json`` -- everything else: step, config, the optimizer/scheduler structure and
  class names (loading into other classes is refused before anything is loaded), the
  trainer state (epoch, data position, RNG states, metrics).

It is written into a temporary directory, every file fsynced, then renamed into place
with ``os.replace``, so a crash never leaves a half-written ``step-*`` directory (only a
``.tmp-step-*`` one, which :func:`sweep_temporaries` removes: the trainer at each fit's start). A
``latest`` file (also replaced atomically) names the newest one; ``keep_last`` rotates
old ones out. Loading reads only JSON and safetensors: nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from rnnkit._checks import is_int
from rnnkit.train.serialize import (
    flatten,
    fsync_dir,
    load_module,
    load_tensors,
    save_module,
    save_tensors,
    unflatten,
    write_json,
)

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "sweep_temporaries",
    "unwrap_model",
]

FORMAT = "rnnkit-checkpoint-1"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# What save_checkpoint's mkdtemp/mkstemp names look like: a checkpoint being written, the trash of a
# replaced or rotated one, the next `latest` (the random part: tempfile's [a-z0-9_]).
_TEMPORARY = re.compile(r"^\.(?:(?:tmp|old)-step-\d+|latest)-[a-z0-9_]+$")

log = logging.getLogger("rnnkit.train")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare module under DDP / ``torch.compile`` wrappers (their keys have prefixes), and
    under the trainer's :class:`~rnnkit.train.distributed.StepFnModule`."""
    from rnnkit.train.distributed import StepFnModule

    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(model, StepFnModule):
            model = model.model
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest (lowest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _latest_name(root: Path) -> str | None:
    """The step directory's name that the pointer file ``root/latest`` holds, or ``None``."""
    pointer = root / "latest"
    return pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``root/latest``, else the highest step, else ``None``."""
    root = Path(root)
    named = _latest_name(root)
    if named is not None and (root / named / "state.json").is_file():
        return root / named
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def stale_latest(root: str | os.PathLike | None) -> str:
    """A note for a "no checkpoint" message when ``root/latest`` names a step that is gone or
    incomplete (deleted or rotated out by hand, a copied half directory), else ``""`` (also for
    no ``root``): the pointer says a run was there, so "no checkpoint" alone would read as a
    mistyped path."""
    named = None if root is None else _latest_name(Path(root))
    if named is None or (Path(root) / named / "state.json").is_file():
        return ""
    pointer = Path(root) / "latest"
    return f"; {pointer} is stale: it names {named!r}, which is gone or incomplete (no {named}/state.json)"


def _warn_skipped_latest(root: Path, found: Path) -> None:
    """Log a warning when ``root/latest`` names a step other than ``found``, the checkpoint that
    :func:`latest_checkpoint` fell back to: the named one is incomplete (its ``state.json`` deleted
    by hand), and a resume silently went back to an earlier step."""
    named = _latest_name(root)
    if named is not None and named != found.name:
        log.warning(
            "%s names %s, which is not a complete checkpoint (no %s); loading %s instead",
            root / "latest", named, root / named / "state.json", found.name,
        )  # fmt: skip


def sweep_temporaries(root: str | os.PathLike) -> list[Path]:
    """Delete what killed :func:`save_checkpoint` calls left in ``root`` (its temporary
    directories and files, by their name pattern only; nothing else) and return their paths. A
    step the kill left only in the trash of a re-save (its new copy not yet in place: the step
    ``latest`` names, or one with a ``.tmp-step-*`` copy) is first moved back; a rotated-out one
    is not.
    Call it only while no other process writes checkpoints there (the trainer: under
    ``out_dir``'s lock): a write in flight has the same names."""
    root = Path(root)
    if not root.is_dir():
        return []
    latest = _latest_name(root)
    for trash in root.glob(".old-step-*"):
        # killed between a re-save's two renames: the old copy is in the trash and the new one
        # still a temporary; the old one is complete, so it goes back rather than out. A
        # rotation's trash (never the step `latest` names, no new copy beside it) stays trash: a
        # kill in its rmtree leaves a copy missing files that a step-* name would list as complete
        if not _TEMPORARY.match(trash.name):
            continue
        step = trash / trash.name[len(".old-") :].rsplit("-", 1)[0]
        resaved = step.name == latest or any(root.glob(f".tmp-{step.name}-*"))
        if resaved and step.is_dir() and not (root / step.name).exists():
            os.replace(step, root / step.name)
    gone = [p for p in root.iterdir() if _TEMPORARY.match(p.name)]
    for p in gone:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if gone:
        fsync_dir(root)
    return gone


def _write_latest(root: Path, name: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".latest-", dir=root)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / "latest")
    fsync_dir(root)


def save_checkpoint(
    root: str | os.PathLike,
    model: nn.Module,
    optimizer: Any | None = None,
    scheduler: Any | None = None,
    *,
    step: int,
    state: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    keep_last: int | None = 3,
    files: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``root/step-<step>/`` atomically, point ``root/latest`` at it, rotate.

    ``state`` may hold tensors anywhere (they go to ``state.safetensors``); the rest
    must be JSON data. ``config`` is stored verbatim for humans and for the CLI.
    ``files(directory)``: writes the caller's own files of the checkpoint (the trainer's
    ``history.jsonl``) into its temporary directory, fsynced, before ``state.json`` marks it complete.
    ``keep_last``: number of newest checkpoints kept (``None`` keeps all): the highest steps up to
    this one (those above it, left by a run that resumed from an older checkpoint, go first).
    Returns the checkpoint directory.
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    # a negative step wrote step--00000001, which list_checkpoints skips (lost, silently); a float
    # failed in the directory name's format ("Unknown format code 'd'"); True was written as step 1
    if not is_int(step) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    _check_model(model)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:09d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    try:
        save_module(unwrap_model(model), tmp / "model.safetensors")
        doc: dict[str, Any] = {"format": FORMAT, "step": step, "config": config or {}}
        opt_tensors: dict = {}
        for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler")):
            if obj is not None:
                doc[key], t = flatten(obj.state_dict(), key)
                doc[f"{key}_class"] = type(obj).__name__
                opt_tensors.update(t)
        if optimizer is not None or scheduler is not None:
            save_tensors(opt_tensors, tmp / "optimizer.safetensors")
        doc["state"], state_tensors = flatten(state or {}, "state")
        if state_tensors:
            save_tensors(state_tensors, tmp / "state.safetensors")
        if files is not None:
            files(tmp)
        write_json(doc, tmp / "state.json")  # last: its presence marks a complete checkpoint
        fsync_dir(tmp)
        final = root / name
        if final.exists():  # re-saving a step (e.g. after a resume): swap, then delete
            trash = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=root))
            os.replace(final, trash / name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_latest(root, name)
    if keep_last is not None:
        # By step, but the steps above this one first: a run resumed from an older checkpoint left
        # them behind (by step alone the rotation kept those and removed this run's own newer ones)
        ckpts = list_checkpoints(root)
        after = [p for p in ckpts if int(_STEP_DIR.match(p.name).group(1)) > step]
        for old in [*after, *(p for p in ckpts if p not in after)][:-keep_last]:
            if old != final:
                # out of the step-* names first: a crash in rmtree must not leave a step dir that
                # still has its state.json (listed as complete) without its weights
                trash = Path(tempfile.mkdtemp(prefix=f".old-{old.name}-", dir=root))
                os.replace(old, trash / old.name)
                shutil.rmtree(trash, ignore_errors=True)
    return final


def _model_only(doc: dict[str, Any]) -> str:
    """What to do with a checkpoint of weights alone (a Trainer's ``best/``, by design), for the
    error of a load that asked it for optimizer or scheduler state; ``""`` for another one."""
    if "optimizer" in doc or "scheduler" in doc:
        return ""
    return (
        ": it is a model-only checkpoint (the weights alone, as a Trainer's best/ holds); load its "
        "weights with load_checkpoint(path, model), not with an optimizer, scheduler or Trainer.load"
    )


def _check_param_groups(ckpt: Path, optimizer: Any, saved: dict[str, Any]) -> None:
    """A ``ValueError`` naming ``ckpt`` and both layouts when ``optimizer``'s parameter groups (how
    many, and each one's number of parameters) are not the saved ones: torch's own check ran after
    the model was loaded (a refused resume left the checkpoint's weights in the model) and named
    neither the checkpoint nor the sizes."""
    groups = getattr(optimizer, "param_groups", None)
    if groups is None or not isinstance(saved.get("param_groups"), list):
        return  # an optimizer-like object of its own: its load_state_dict decides
    got = [len(g["params"]) for g in groups]
    want = [len(g["params"]) for g in saved["param_groups"]]
    if got != want:
        raise ValueError(
            f"{ckpt} holds an optimizer of {len(want)} parameter group(s) of {want} parameters, got "
            f"one of {len(got)} group(s) of {got}: build it over the same parameters, in the same groups"
        )


def _check_model(model: object) -> None:
    """A ``TypeError`` unless ``model`` is a module: else "'NoneType' object has no attribute
    'state_dict'" (on loading, after the checkpoint was read)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: Any | None = None,
    scheduler: Any | None = None,
    *,
    strict: bool = True,
    check: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Load a checkpoint (a ``step-*`` directory, or a root: then its latest one).

    Weights, optimizer and scheduler are loaded in place when given, after ``check`` (if given)
    has seen the document (as returned) and not raised. Returns the
    ``state.json`` document with ``state`` decoded (tensors on CPU) and ``path`` added.
    Raises ``FileNotFoundError`` when there is no checkpoint.
    """
    if model is not None:
        _check_model(model)
    path = Path(path)
    ckpt = path if (path / "state.json").is_file() else latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint in {path} (expected step-*/state.json){stale_latest(path)}")
    if ckpt != path:
        _warn_skipped_latest(path, ckpt)
    try:
        doc = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{ckpt / 'state.json'} is not valid JSON (truncated or damaged?): {e}") from None
    if doc.get("format") != FORMAT:
        raise ValueError(f"{ckpt}: unknown checkpoint format {doc.get('format')!r}, expected {FORMAT!r}")
    # Everything is checked before anything is loaded: a refused resume leaves the objects as they
    # were. Another optimizer class would fail inside torch (a bare KeyError) or, worse, load and
    # take the other's hyperparameters. Checkpoints of before the class names skip that check.
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler")):
        if obj is None:
            continue
        if key not in doc:
            raise ValueError(
                f"{ckpt} has no {key} state (got {type(obj).__name__} to load it into)" + _model_only(doc)
            )
        saved = doc.get(f"{key}_class")
        if saved is not None and saved != type(obj).__name__:
            raise ValueError(
                f"{ckpt} was written with {key} {saved}, got {type(obj).__name__}: "
                f"resume with the same {key} class (or load the model alone)"
            )
    # A file missing from a complete checkpoint (deleted by hand, half-rotated) is damage, not
    # "no checkpoint" (FileNotFoundError): the CLI would report an empty run directory.
    has_opt = optimizer is not None or scheduler is not None
    objs = (("optimizer", optimizer), ("scheduler", scheduler))
    wanted = ["model.safetensors"] * (model is not None) + ["optimizer.safetensors"] * has_opt
    for name in wanted:
        if not (ckpt / name).is_file():
            raise ValueError(f"checkpoint {ckpt} is incomplete: {name} is missing")
    # the other files are read before the model is loaded: a damaged one changes nothing
    tensors = load_tensors(ckpt / "optimizer.safetensors") if has_opt else {}
    st_file = ckpt / "state.safetensors"
    try:  # decoded here too: a tensor missing from its file (state.safetensors deleted) is refused
        state = unflatten(doc["state"], load_tensors(st_file) if st_file.is_file() else {})
        opt_states = {k: unflatten(doc[k], tensors) for k, o in objs if o is not None}
    except ValueError as e:
        raise ValueError(f"checkpoint {ckpt} is incomplete or damaged: {e}") from None
    if optimizer is not None:
        _check_param_groups(ckpt, optimizer, opt_states["optimizer"])
    if check is not None:  # the caller's refusals (and its own files read), before anything is loaded too
        check({**doc, "state": state, "path": str(ckpt)})
    if model is not None:
        load_module(unwrap_model(model), ckpt / "model.safetensors", strict=strict)
    for key, obj in objs:
        if obj is not None:
            obj.load_state_dict(opt_states[key])
    doc["state"] = state
    doc["path"] = str(ckpt)
    return doc
