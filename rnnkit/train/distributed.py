"""Distributed data-parallel helpers (``torch.distributed``, launched with ``torchrun``).

``torchrun --nproc_per_node N train.py`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``/``MASTER_PORT``; :func:`setup_distributed` reads them and initializes
the process group: ``nccl`` when CUDA is available, ``gloo`` on CPU. Without those
variables everything degrades to a single process (rank 0 of 1), so the same script
runs with ``python train.py``.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "setup_distributed",
    "cleanup_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_reduce_sum",
    "all_reduce_max",
    "all_gather_object",
    "agreed_batches",
    "StepFnModule",
    "launched_world_size",
    "finish_process",
    "on_every_rank",
]

_JOINED = False  # whether setup_distributed initialized a process group in this process


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(backend: str | None = None, *, device: str | torch.device | None = None) -> DistInfo:
    """Initialize the default process group from torchrun's environment, if present.

    ``backend`` defaults to ``nccl`` with CUDA, else ``gloo``. ``device`` defaults to CUDA when
    available, else the CPU. A CUDA device without an index (the default, or ``"cuda"``) is
    ``cuda:LOCAL_RANK`` modulo the visible GPUs: one GPU a rank when a node has as many as ranks,
    ``cuda:0`` when each process sees only its own (``CUDA_VISIBLE_DEVICES`` set per rank), ranks
    sharing GPUs round robin when there are fewer (gloo only: NCCL needs a GPU per rank). An
    index (``"cuda:1"``) is taken as given. Returns the rank, world size and device of this process.
    """
    world = launched_world_size()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        # not the current GPU (cuda:0 on every rank): this rank's own
        dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        global _JOINED
        _JOINED = True
    return DistInfo(rank, world, local, dev)


def launched_world_size() -> int:
    """The ``WORLD_SIZE`` torchrun set for this process; 1 without torchrun (no group needed)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def finish_process(code: int) -> int:
    """Return ``code``, or, in a process that joined a process group, flush stdout/stderr and
    leave at once with ``os._exit(code)``: for entry points (the ``rnnkit`` command,
    ``python -m rnnkit.study``), called once everything is written and closed.

    gloo's background threads can abort interpreter finalization after the work is done
    ("terminate called without an active exception", SIGABRT; pytorch #190489), and torchrun
    then reports the whole finished job as failed. Skipping finalization avoids it.
    """
    if _JOINED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def on_every_rank(exc: BaseException) -> BaseException:
    """``exc`` marked as an error every rank raises alike, decided together (through a collective):
    ``exc.every_rank`` is True under DDP. An entry point reports it once, on rank 0 (the ``rnnkit``
    command), where an unmarked error may be a rank's own and is reported by each."""
    if is_distributed():
        exc.every_rank = True  # type: ignore[attr-defined]
    return exc


def cleanup_distributed(barrier: bool | None = None) -> None:
    """Tear the process group down, after every rank got here (``barrier``): a rank that
    destroys its group while another still talks to it can abort the other (gloo's threads
    terminate). ``barrier=None``: unless an exception is propagating (``sys.exc_info()``, as in
    a ``finally:`` or ``except:`` clause): a rank that failed alone (rank 0 writing ``best/`` on
    a full disk) would wait there for the others while they wait for it in their next collective,
    forever; without the barrier it leaves, and their collective fails instead."""
    if barrier is None:
        barrier = sys.exc_info()[1] is None
    if dist.is_available() and dist.is_initialized():
        if barrier and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (the one that logs and writes checkpoints)."""
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device | None = None) -> list[float]:
    """Sum a few floats over ranks (float64, so token counts stay exact)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max(value: float, device: torch.device | None = None) -> float:
    """The largest of the ranks' ``value`` (float64), on every rank."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (in-memory transport; used to gather per-rank RNG states)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


_NO_BATCH = object()  # what agreed_batches' iterator gives once this rank's data ran out


def agreed_batches(
    batches: Iterable[Any], epoch: int, first_step: int, device: torch.device | None = None
) -> Iterator[Any]:
    """``batches`` (one epoch's, from step ``first_step`` on), under DDP only while every rank has
    one, and none once no rank has: each training step's gradient all-reduce needs all ranks.

    A rank whose data ran out early would start its next epoch (its batches paired with the others'
    current ones), then finish and leave the others waiting in a collective (a hang). So the ranks
    count who has a batch (an all-reduce per step), and all raise a ``ValueError`` alike if some
    have one and some not. Without a process group it is ``iter(batches)``.
    """
    if not is_distributed():
        yield from batches
        return
    it, world = iter(batches), dist.get_world_size()
    for step in itertools.count(first_step):
        batch = next(it, _NO_BATCH)
        mine = batch is not _NO_BATCH
        have = int(all_reduce_sum([float(mine)], device)[0])
        if have == 0:
            return
        if have < world:
            raise on_every_rank(
                ValueError(
                    f"the ranks' training data yielded unequal numbers of batches in epoch {epoch}: "
                    f"{have} of {world} ranks had a batch for step {step} (this rank "
                    f"{'has a batch' if mine else 'has none'}); every rank must yield as many batches "
                    "(shard the data with DistributedSampler, BucketBatchSampler(num_replicas=...) or "
                    "bptt_batches(rank=..., world_size=...))"
                )
            )
        yield batch


class StepFnModule(nn.Module):
    """``step_fn(model, batch, state) -> (loss, state)`` as the forward of a module holding
    ``model``: what :class:`~rnnkit.train.Trainer` wraps in ``DistributedDataParallel`` when it
    is given a ``step_fn``. DDP's gradient all-reduce needs the step's forward to run through the
    wrapper, and ``step_fn`` needs the bare model (its own methods, e.g. ``model.loss(...)`` or
    ``model.encode(...)``, which the wrapper does not have): so the step runs inside DDP's forward
    and gets the bare model, as in one process.
    """

    def __init__(self, model: nn.Module, step_fn: Any) -> None:
        super().__init__()
        self.model = model
        # a plain attribute: a step_fn that is an nn.Module is not a part of the wrapped model
        object.__setattr__(self, "step_fn", step_fn)

    def forward(self, batch: Any, state: Any) -> Any:
        return self.step_fn(self.model, batch, state)
