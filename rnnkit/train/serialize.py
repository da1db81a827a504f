"""Pickle-free serialization of nested state: tensors to safetensors, the rest to JSON.

``flatten(obj)`` returns ``(structure, tensors)``: ``structure`` is plain JSON data in
which every tensor is replaced by ``{"__tensor__": name}`` and ``tensors`` maps those
names to tensors. Dict keys keep their type (optimizer states are keyed by int), tuples
stay tuples, namedtuples stay namedtuples (a recurrent state ``LSTMState(h, c)``, a
``PackedSequence``) and non-finite floats survive strict JSON. Loading needs only ``json`` and
``safetensors``, so a checkpoint can never execute code: a namedtuple comes back as the class
its module and name record when that module is already imported and the class there has the
same fields (nothing is imported, no attribute hook runs), else as a ``collections.namedtuple``
of the same name and fields, whose attributes the model's code reads just the same.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "flatten",
    "unflatten",
    "save_tensors",
    "load_tensors",
    "write_json",
    "write_json_atomic",
    "fsync_dir",
]


def flatten(obj: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}

    def enc(o: Any, path: str) -> Any:
        if isinstance(o, torch.Tensor):
            name = path or "tensor"
            # copy: safetensors refuses tensors sharing storage, and the caller keeps going
            tensors[name] = o.detach().to("cpu", copy=True).contiguous()
            return {"__tensor__": name}
        if isinstance(o, bool) or o is None or isinstance(o, (int, str)):
            return o
        if isinstance(o, float):
            return o if math.isfinite(o) else {"__float__": repr(o)}
        if isinstance(o, dict):
            items = []
            for k, v in o.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise TypeError(f"cannot serialize dict key {k!r} at {path or '<root>'}")
                items.append([k, enc(v, f"{path}.{k}" if path else str(k))])
            return {"__dict__": items}
        if isinstance(o, tuple) and hasattr(o, "_fields"):  # a namedtuple: its type is part of it
            cls = type(o)
            return {
                "__namedtuple__": [
                    cls.__module__,
                    cls.__qualname__,
                    list(o._fields),
                    [enc(v, f"{path}.{f}") for f, v in zip(o._fields, o, strict=True)],
                ]
            }
        if isinstance(o, tuple):
            return {"__tuple__": [enc(v, f"{path}.{i}") for i, v in enumerate(o)]}
        if isinstance(o, list):
            return [enc(v, f"{path}.{i}") for i, v in enumerate(o)]
        raise TypeError(
            f"cannot serialize {type(o).__name__} at {path or '<root>'}: only tensors, "
            "numbers, strings, None and dicts/lists/tuples of them are supported"
        )

    return enc(obj, prefix), tensors


def _namedtuple_class(module: str, qualname: str, fields: list[str], cache: dict[tuple, type]) -> type:
    """The class of a serialized namedtuple, without importing or running anything: the
    recorded class if its module is loaded and the class found there (plain ``__dict__``
    lookups, no ``__getattr__`` hook) is a tuple type with these fields, else a
    ``collections.namedtuple`` of the same name and fields (one per kind in a checkpoint)."""
    key = (module, qualname, tuple(fields))
    if key in cache:
        return cache[key]
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = vars(obj).get(part) if isinstance(obj, (types.ModuleType, type)) else None
    if not (isinstance(obj, type) and issubclass(obj, tuple) and list(getattr(obj, "_fields", ())) == fields):
        try:
            obj = collections.namedtuple(qualname.rsplit(".", 1)[-1], fields)
        except (TypeError, ValueError) as e:  # not identifiers: not written by flatten
            raise ValueError(f"malformed serialized namedtuple {module}.{qualname}{fields}: {e}") from e
    cache[key] = obj
    return obj


def unflatten(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    classes: dict[tuple, type] = {}

    def dec(o: Any) -> Any:
        if isinstance(o, list):
            return [dec(v) for v in o]
        if isinstance(o, dict):
            if "__tensor__" in o:
                if o["__tensor__"] not in tensors:  # a bare KeyError named neither cause nor file
                    raise ValueError(
                        f"serialized state refers to tensor {o['__tensor__']!r}, which is not among the "
                        f"{len(tensors)} tensors stored (a missing or damaged safetensors file?)"
                    )
                return tensors[o["__tensor__"]]
            if "__float__" in o:
                return float(o["__float__"])
            if "__tuple__" in o:
                return tuple(dec(v) for v in o["__tuple__"])
            if "__namedtuple__" in o:
                module, qualname, fields, values = o["__namedtuple__"]
                return _namedtuple_class(module, qualname, fields, classes)(*(dec(v) for v in values))
            if "__dict__" in o:
                return {k: dec(v) for k, v in o["__dict__"]}
            raise ValueError(f"malformed serialized state: unexpected object {sorted(o)}")
        return o

    return dec(structure)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path))
    _fsync_file(path)


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, each a copy in memory of its own (aligned as any tensor
    torch allocates): in the file's buffer a tensor lies where the tensors before it put it, and
    BLAS rounds otherwise over memory aligned otherwise (a loaded recurrent state broke a resume's
    bit-exactness, depending on what else the checkpoint held)."""
    try:
        return {k: v.clone() for k, v in load_file(str(path), device=str(device)).items()}
    except SafetensorError as e:  # not an OSError/ValueError, and it names no file
        raise ValueError(f"{path}: not a readable safetensors file (truncated or damaged?): {e}") from None


def write_json(obj: Any, path: Path) -> None:
    """Write JSON and fsync it (the caller renames it into place)."""
    write_synced(path, json.dumps(obj, indent=1, allow_nan=False))


def write_json_atomic(obj: Any, path: Path, **dumps: Any) -> None:
    """``obj`` as JSON (``json.dumps`` with ``indent=2, sort_keys=True`` unless ``dumps`` says
    otherwise) into ``path`` atomically: written and fsynced beside it, renamed over it, the
    directory fsynced, so a crash leaves the old file or the new one, never an empty or partial
    one (run.json, results.json, a study's study.json)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write_synced(tmp, json.dumps(obj, **{"indent": 2, "sort_keys": True, **dumps}) + "\n")
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_synced(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` and fsync it: on disk before any rename makes it visible."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def save_module(module: torch.nn.Module, path: Path) -> None:
    """``module.state_dict()`` to a safetensors file, each tensor an independent CPU copy.

    ``safetensors.torch.save_model`` keeps one name per storage and refuses tensors that are
    parts of a storage no single name covers, which is exactly what a recurrent layer's
    weights are on CUDA once ``flatten_parameters`` has put them in one cuDNN buffer (torch.nn's
    layers too). Tied weights are written under each of their names (a few bytes more)."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
    save_tensors(tensors, path)


def load_module(module: torch.nn.Module, path: Path, strict: bool = True):
    """Load a file of :func:`save_module` (or of ``safetensors.torch.save_model``, which
    stores tied weights under one name only) into ``module``; returns ``load_state_dict``'s
    result. A file that does not fit (``RuntimeError`` naming it and torch's list of the names and
    shapes) leaves ``module`` as it was."""
    tensors = load_tensors(path)
    groups: dict[tuple, list[str]] = {}  # names of the module that are one tensor (tied)
    for k, v in module.state_dict().items():
        if v.numel():
            groups.setdefault((v.data_ptr(), tuple(v.shape), v.stride()), []).append(k)
    for names in groups.values():
        have = [n for n in names if n in tensors]
        for n in names if have else ():
            tensors.setdefault(n, tensors[have[0]])
    # torch copies every tensor that fits before it raises for those that do not (another shape, a
    # missing or unexpected name): the module's own values go back then, a refused file loads nothing
    before = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
    try:
        return module.load_state_dict(tensors, strict=strict)
    except RuntimeError as e:  # another shape or architecture: say which file it was
        module.load_state_dict(before)
        raise RuntimeError(f"{path}: {e}") from None
