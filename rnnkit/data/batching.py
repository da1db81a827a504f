"""Language-model batching: contiguous streams cut into BPTT windows.

The 1-D token tensor is cut into ``batch_size`` contiguous streams (the scheme of
Zaremba et al. and PyTorch's word-LM example). Each step yields the next window of
every stream as input and the same window shifted by one token as target, so a
recurrent state carried from one window to the next sees an unbroken text.

Shapes: ``inputs``/``targets`` are ``(T, B)`` (time-major, the default) or ``(B, T)``
with ``batch_first=True``; ``T`` is the window length of the step (``seq_len``, or
shorter for the last window, or random with ``variable_length=True``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from rnnkit import _checks
from rnnkit.options import check_prob

__all__ = ["LMBatch", "BPTTBatches", "bptt_batches", "make_streams"]


class LMBatch(NamedTuple):
    """One BPTT window of every stream.

    ``inputs`` and ``targets``: ``(T, B)`` or ``(B, T)`` (``batch_first``).
    ``seq_len``: ``T`` for this step. ``lr_scale``: ``T / base seq_len`` -- multiply the
    learning rate by it when window lengths vary (Merity et al. 2018, sec. 4.1), so
    every token weighs the same. ``position``: offset of the window in each stream.
    """

    inputs: Tensor
    targets: Tensor
    seq_len: int
    lr_scale: float
    position: int


def check_int(name: str, value: object, none_ok: bool = False) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is an int (numpy's too; not a bool), or
    ``None`` when ``none_ok``: a float size passed the range checks and failed later, in a slice."""
    if value is None and none_ok:
        return
    if not _checks.is_int(value):
        raise ValueError(f"{name} must be an int{' or None' if none_ok else ''}, got {value!r}")


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of ``(seed, epoch)``, reduced modulo 2**64: ``manual_seed`` takes
    [-2**63, 2**64) (a negative one as itself plus 2**64, so no seed that worked changes) and
    refused the product of a large seed (``2**62``) only at iteration."""
    return (int(seed) * 1_000_003 + int(epoch)) % 2**64  # int(): numpy's would overflow or wrap


def _as_1d(data: Tensor | Sequence[int]) -> Tensor:
    if not isinstance(data, Tensor):
        try:
            data = torch.as_tensor(data)
        except (TypeError, RuntimeError, ValueError) as e:  # torch's words named no argument
            got = f"{type(data).__name__} ({e})"
            raise ValueError(f"data must be a 1-D tensor of tokens, got {got}") from None
    if data.dim() != 1:
        raise ValueError(
            f"data must be a 1-D tensor of tokens, got a {data.dim()}-D tensor of shape {tuple(data.shape)}"
        )
    return data


def make_streams(
    data: Tensor | Sequence[int], batch_size: int, *, rank: int = 0, world_size: int = 1
) -> tuple[Tensor, Tensor]:
    """Cut ``data`` (N,) into streams; returns ``(inputs, targets)``, each ``(B_local, L)``.

    ``L = N // batch_size``; the tokens beyond ``batch_size * L`` are dropped. The target
    of token ``i`` is token ``i + 1``; only the very last target, which has no next token,
    wraps around to ``data[0]``. With ``world_size > 1`` each rank keeps its contiguous
    slice of ``batch_size // world_size`` streams (the global batch is split, not copied).
    """
    data = _as_1d(data)
    for name, v in (("batch_size", batch_size), ("rank", rank), ("world_size", world_size)):
        check_int(name, v)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if batch_size % world_size:
        raise ValueError(
            f"batch_size (the global batch) must be divisible by world_size, got "
            f"batch_size={batch_size}, world_size={world_size}"
        )
    n = data.numel()
    length = n // batch_size
    if length < 1:
        raise ValueError(f"data has {n} tokens, fewer than batch_size={batch_size}")
    kept = batch_size * length
    # Cyclic shift by one: the next token where there is one, data[0] after the end.
    target_idx = torch.arange(1, kept + 1) % n
    inputs = data[:kept].view(batch_size, length)
    targets = data[target_idx].view(batch_size, length)
    per_rank = batch_size // world_size
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    return inputs[rows], targets[rows]


class BPTTBatches:
    """Re-iterable BPTT windows over a token tensor; see :func:`bptt_batches`."""

    def __init__(
        self,
        data: Tensor | Sequence[int],
        batch_size: int,
        seq_len: int,
        *,
        batch_first: bool = False,
        variable_length: bool = False,
        p: float = 0.95,
        std: float = 5.0,
        min_len: int = 5,
        max_len: int | None = None,
        drop_last: bool = False,
        seed: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        data = _as_1d(data)
        for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("min_len", min_len)):
            check_int(name, v)
        check_int("max_len", max_len, none_ok=True)
        check_int("seed", seed, none_ok=True)  # a float failed only at iteration, in manual_seed
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if min_len < 1:  # (was raised to 1 silently)
            raise ValueError(f"min_len must be >= 1, got {min_len}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if data.numel() < batch_size * seq_len:
            raise ValueError(
                f"data has {data.numel()} tokens, fewer than batch_size * seq_len = "
                f"{batch_size} * {seq_len} = {batch_size * seq_len}"
            )
        p = check_prob("p", p)  # (True was taken as 1)
        self.inputs, self.targets = make_streams(data, batch_size, rank=rank, world_size=world_size)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.batch_first, self.drop_last = batch_first, drop_last
        self.variable_length, self.p, self.std = variable_length, p, std
        self.min_len = min(min_len, seq_len)
        # AWD-LSTM caps the drawn length (seq_len + 40) so one window cannot blow memory.
        self.max_len = max_len if max_len is not None else seq_len + 40
        if variable_length and not std >= 0.0:  # written so that nan is rejected too
            raise ValueError(f"std must be >= 0, got {std}")
        if variable_length and self.max_len < self.min_len:
            # an empty [min_len, max_len]: max_len < 1 gave windows of 0 tokens, an endless epoch
            raise ValueError(
                f"max_len must be >= min_len (min(min_len, seq_len)) = {self.min_len}, "
                f"got max_len={self.max_len}"
            )
        if variable_length and seed is None and world_size > 1:
            # each rank's global RNG would draw its own lengths: ranks seeded apart would cut
            # different numbers of windows, and DDP's collectives would fall out of step (a hang)
            raise ValueError(
                f"variable_length=True with world_size={world_size} needs a seed, the same on every "
                "rank, so that all ranks draw the same window lengths"
            )
        self.seed, self.epoch = (None if seed is None else int(seed)), 0  # manual_seed refuses numpy's

    @property
    def stream_len(self) -> int:
        """Tokens per stream, ``L``."""
        return self.inputs.shape[1]

    def set_epoch(self, epoch: int) -> None:
        """Make the random window lengths of this epoch a function of ``(seed, epoch)``."""
        self.epoch = epoch

    def __len__(self) -> int:
        # Exact for fixed windows; for variable windows an estimate (used by progress bars).
        n = self.stream_len / self.seq_len
        return math.floor(n) if self.drop_last else math.ceil(n)

    def _draw_len(self, gen: torch.Generator) -> int:
        base = self.seq_len if torch.rand((), generator=gen).item() < self.p else self.seq_len / 2
        drawn = int(torch.normal(float(base), float(self.std), (), generator=gen).item())
        return min(self.max_len, max(self.min_len, drawn))

    def __iter__(self) -> Iterator[LMBatch]:
        gen = None
        if self.variable_length:
            gen = torch.Generator()
            if self.seed is None:
                # Drawn from the global RNG so that seed_everything() governs it.
                gen.manual_seed(int(torch.randint(0, 2**62, ()).item()))
            else:
                gen.manual_seed(epoch_seed(self.seed, self.epoch))
        pos, total = 0, self.stream_len
        while pos < total:
            drawn = self._draw_len(gen) if gen is not None else self.seq_len
            length = min(drawn, total - pos)
            # a window the stream's end cut short, not one shorter than min_len: a drawn length
            # of 21 cut to 18 (>= min_len) was kept, so the last window was still incomplete
            if self.drop_last and length < drawn:
                return
            x = self.inputs[:, pos : pos + length]
            y = self.targets[:, pos : pos + length]
            if not self.batch_first:
                x, y = x.t().contiguous(), y.t().contiguous()
            yield LMBatch(x, y, length, length / self.seq_len, pos)
            pos += length


def bptt_batches(
    data: Tensor | Sequence[int],
    batch_size: int,
    seq_len: int,
    *,
    batch_first: bool = False,
    variable_length: bool = False,
    p: float = 0.95,
    std: float = 5.0,
    min_len: int = 5,
    max_len: int | None = None,
    drop_last: bool = False,
    seed: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> BPTTBatches:
    """Language-model batches of a 1-D token tensor ``data`` (N,).

    Iterating yields :class:`LMBatch` windows: ``inputs``/``targets`` ``(T, B)``, or
    ``(B, T)`` with ``batch_first``. Example: data 1..12, ``batch_size=2``, ``seq_len=3``
    gives inputs ``[[1,2,3],[7,8,9]]`` / targets ``[[2,3,4],[8,9,10]]``, then inputs
    ``[[4,5,6],[10,11,12]]`` / targets ``[[5,6,7],[11,12,1]]`` (shown batch-first).

    ``variable_length=True`` draws each window length as in AWD-LSTM: base ``seq_len``
    with probability ``p`` else ``seq_len / 2``, then ``N(base, std)``, clamped to
    ``[min_len, max_len]`` (default ``seq_len + 40``; ``min_len`` is capped at ``seq_len``,
    and ``max_len`` below it or a negative ``std`` is a ``ValueError``); ``LMBatch.lr_scale`` reports
    ``T / seq_len`` for rescaling the learning rate. Lengths come from ``seed`` and the
    epoch set by ``set_epoch`` (or from the global torch RNG when ``seed`` is None, which
    ``world_size > 1`` refuses: pass one ``seed`` on all ranks, so that their windows have one
    length).

    The last window of a stream may be cut short by the stream's end (shorter than ``seq_len``,
    or with ``variable_length`` than its drawn length); ``drop_last`` drops it (a stream shorter
    than the first drawn length then yields no window).
    ``rank``/``world_size`` shard the global ``batch_size`` streams for DDP.
    """
    return BPTTBatches(
        data,
        batch_size,
        seq_len,
        batch_first=batch_first,
        variable_length=variable_length,
        p=p,
        std=std,
        min_len=min_len,
        max_len=max_len,
        drop_last=drop_last,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
