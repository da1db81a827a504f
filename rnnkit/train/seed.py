"""Seeding and JSON-safe RNG snapshots (Python, NumPy, torch CPU and CUDA)."""

from __future__ import annotations

import base64
import os
import random
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from rnnkit._checks import is_int

__all__ = [
    "seed_everything",
    "seed_rank",
    "check_seed",
    "get_rng_state",
    "set_rng_state",
    "data_generators",
    "check_generators",
]

#: The seeds ``torch.manual_seed`` takes: [-2**63, 2**64) (a negative one as itself plus 2**64).
SEED_MIN, SEED_END = -(2**63), 2**64


def check_seed(seed: object) -> int:
    """``seed`` as an int, or a ``ValueError`` naming the range torch takes: outside
    it ``torch.manual_seed`` failed with "Overflow when unpacking long long", naming nothing."""
    if not is_int(seed) or not SEED_MIN <= seed < SEED_END:
        raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
    return int(seed)


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device): one call, reproducible run.

    ``PYTHONHASHSEED`` is set to ``seed % 2**32`` for child processes (spawned workers).

    ``deterministic=True`` also asks torch for deterministic kernels (slower on GPU; ops
    without a deterministic version then raise) and sets the cuBLAS workspace variable.
    A seed outside torch's range, [-2**63, 2**64), is refused before anything is seeded.
    """
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices
    # only affects subprocesses (workers); reduced as NumPy's seed: Python refuses a hash seed
    # outside [0, 2**32), and every child process then died at start ("Fatal Python error")
    os.environ["PYTHONHASHSEED"] = str(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def seed_rank(rank: int) -> None:
    """Give DDP rank ``rank`` streams of its own of the global RNGs (Python, NumPy, torch and
    CUDA), derived from their current state: call it on every rank after the model is built from
    one seed, so that the initial weights are alike and the dropout masks differ per rank
    (seeded alike, every rank drew the same masks on its share of the batch).

    Rank 0 keeps its streams (a world of one runs as one process); rank ``r > 0`` is reseeded
    from a draw on its own torch stream (alike on all ranks) mixed with ``r``: reproducible for a
    seed and a rank. Data that every rank must draw alike takes an explicit seed
    (``bptt_batches(..., seed=)``, ``DistributedSampler``), not the global RNG.
    """
    if not is_int(rank) or rank < 0:
        raise ValueError(f"rank must be an integer >= 0, got {rank!r}")
    if rank == 0:
        return
    base = int(torch.randint(0, 2**62, ()).item())
    seed = (base + rank * 0x9E3779B97F4A7C15) % SEED_END  # odd multiplier: distinct mod 2**32 too
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def data_generators(data: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a data loader draws from instead of the global RNG: a
    ``DataLoader``'s ``generator`` (its shuffling and worker seeds, ``DataLoader(...,
    generator=g)``), its sampler's and its batch sampler's (and that one's sampler's), each once."""
    batch_sampler = getattr(data, "batch_sampler", None)
    owners = (data, getattr(data, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None))
    found: list[torch.Generator] = []
    for owner in owners:
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def check_generators(generators: Any) -> list[torch.Generator]:
    """``generators`` (an iterable of ``torch.Generator``) as a list, or a ``TypeError`` naming what
    it got: a wrong object would fail only at the first checkpoint, or a generator be left unsaved."""
    found = list(generators) if isinstance(generators, Iterable) else None
    if found is None or not all(isinstance(g, torch.Generator) for g in found):
        raise TypeError(f"generators must be an iterable of torch.Generator objects, got {generators!r}")
    return found


def _check_generator_args(generators: tuple) -> None:
    """A ``TypeError`` naming the first of ``generators`` (positional arguments) that is not a
    ``torch.Generator``: it failed on a missing ``get_state`` / ``set_state``, and
    :func:`set_rng_state` only after it had restored the global RNGs."""
    for i, g in enumerate(generators):
        if not isinstance(g, torch.Generator):
            got = type(g).__name__
            raise TypeError(f"generators must be torch.Generator objects, got {got} as generator {i}")


def get_rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """Every global RNG state as plain JSON data (lists of ints, base64 strings), and the states
    of ``generators`` (e.g. :func:`data_generators`), which :func:`set_rng_state` restores."""
    _check_generator_args(generators)
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    if generators:
        state["generators"] = [_b64(g.get_state()) for g in generators]
    return state


def set_rng_state(state: dict[str, Any], *generators: torch.Generator) -> None:
    """Restore what :func:`get_rng_state` returned, ``generators`` (the same number, in the same
    order) included; a state without generators (a checkpoint of before them) leaves them as
    they are."""
    _check_generator_args(generators)
    if not isinstance(state, dict):
        raise TypeError(f"state must be the dict get_rng_state returned, got {type(state).__name__}")
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:  # (failed on a KeyError naming one key, after the generators' check)
        raise ValueError(
            f"the RNG state must hold 'python', 'numpy' and 'torch' (what get_rng_state returns), "
            f"got keys {sorted(state)}"
        )
    saved = state.get("generators", [])
    if saved and len(saved) != len(generators):  # checked first: a refused state changes nothing
        raise ValueError(
            f"the RNG state holds {len(saved)} data generator state(s), got {len(generators)} "
            "generator(s) to restore (the training data changed? a DataLoader's generator=..., "
            "the Trainer's generators=...)"
        )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
    for g, s in zip(generators if saved else (), saved, strict=True):
        g.set_state(_unb64(s))
