"""A generic sequence network shared by the task models: input -> encoder -> head.

The encoder is anything :func:`rnnkit.arch.build_recurrent` builds (a recurrent stack,
a TCN, a conv front end + recurrent stack), always batch-first.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from rnnkit._checks import is_int
from rnnkit.arch import build_recurrent
from rnnkit.baselines import TCN, ConvRecurrent, encoder_output_size, step_kwargs
from rnnkit.train.evaluate import kept_modes

__all__ = [
    "SequenceNet", "last_valid", "summary", "splits_directions", "accuracy", "batches", "padded_batches",
    "keeps_mode", "kept_modes", "utf8_error_offset", "check_batch_size",
]  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])


def utf8_error_offset(data: bytes) -> int:
    """The offset in ``data`` of its first byte that is not UTF-8 (``-1`` if none).

    A ``UnicodeDecodeError``'s ``start`` counts from the decoder's chunk (a text file read by
    ``open`` is decoded 8 KiB at a time) and, under ``utf-8-sig``, from after a BOM: the errors
    named a byte thousands before the bad one, or 3 before it."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start
    return -1


def keeps_mode(fn: F) -> F:
    """``fn`` (which takes an argument ``model`` and puts it in eval mode) leaves every module of
    ``model`` in the train/eval mode it found it in: an evaluation or decoding called inside a
    training loop must not leave dropout and batch norm's batch statistics off for the steps
    after it. Each module's own flag is restored (a batch norm kept in eval mode stays so)."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with kept_modes(sig.bind(*args, **kwargs).arguments["model"]):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_batch_size(batch_size: object) -> None:
    """A ``ValueError`` unless ``batch_size`` is an int >= 1 (numpy's too, not a bool): the chunked
    loops ``range(0, n, batch_size)`` of the inference helpers ran no chunk for a negative one (no
    predictions, an exact match of 0.0), failed in ``range`` for 0 or 2.5 and took True as 1."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def padded_batches(
    ids: list[Tensor], batch_size: int, device: torch.device, padding_value: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x (B, T_max) padded with padding_value on device, lengths (B,) on the CPU)`` for
    consecutive chunks of ``batch_size`` id sequences, in order (inference over many inputs)."""
    from torch.nn.utils.rnn import pad_sequence

    check_batch_size(batch_size)
    for i in range(0, len(ids), batch_size):
        chunk = ids[i : i + batch_size]
        x = pad_sequence(chunk, batch_first=True, padding_value=padding_value).to(device)
        yield x, torch.tensor([len(c) for c in chunk])


def batches(
    ds: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    collate_fn: Any = None,
    num_replicas: int = 1,
    rank: int = 0,
) -> torch.utils.data.DataLoader:
    """Batches of ``ds``; with ``num_replicas > 1`` (DDP) rank ``rank``'s share of every global
    batch of ``batch_size`` (a multiple of ``num_replicas``): a ``DistributedSampler`` seeded by
    ``seed``, every rank the same number of batches (the last one padded with repeats); epoch ``e``'s
    order is seeded by ``(seed + e) mod 2**64``. In one process ``seed`` is not read: a shuffled
    order comes from torch's global RNG (the CLI seeds it, ``seed_everything(--seed)``; checkpoints
    hold it, so a resume keeps the order, which a generator of its own would change for the runs
    recorded before it), another order than the ranks' for the same seed."""
    from torch.utils.data import DataLoader, DistributedSampler

    if num_replicas == 1:
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn)
    if batch_size % num_replicas:
        raise ValueError(
            f"batch size {batch_size} (the global batch) must be a multiple of {num_replicas} ranks"
        )
    # it seeds epoch e with seed + e, which torch refuses from 2**64 on (a --seed near 2**64 - 1 failed
    # at the second epoch): a seed of the range's upper half goes as its negative alias (torch reads
    # s < 0 as s + 2**64), so every epoch's seed is (seed + e) mod 2**64, in range, as before where it was
    seed = int(seed) % 2**64
    seed = seed - 2**64 if seed >= 2**63 else seed
    sampler = DistributedSampler(ds, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
    return DataLoader(ds, batch_size=batch_size // num_replicas, sampler=sampler, collate_fn=collate_fn)


def last_valid(out: Tensor, lengths: Tensor | None) -> Tensor:
    """``out`` (B, T, H) -> (B, H): the output at each sequence's last valid step."""
    if lengths is None:
        return out[:, -1]
    idx = (lengths.to(out.device).long() - 1).clamp(min=0)
    return out[torch.arange(out.shape[0], device=out.device), idx]


def splits_directions(encoder: nn.Module) -> bool:
    """Whether ``encoder``'s output is ``[forward | backward]`` concatenated: a bidirectional
    recurrent stack, also behind a conv front end. A TCN's ``bidirectional`` (centred kernels,
    one output per step) is not."""
    rnn = encoder.rnn if isinstance(encoder, ConvRecurrent) else encoder
    return not isinstance(rnn, TCN) and bool(getattr(rnn, "bidirectional", False))


def summary(out: Tensor, lengths: Tensor | None, bidirectional: bool = False) -> Tensor:
    """``out`` (B, T, H) -> (B, H): a many-to-one summary of each sequence, the output at its last
    valid step; ``bidirectional`` (``out`` is ``[forward | backward]``, ``H/2`` each): the forward
    half there and the backward half at step 0, which has read the whole valid sequence (the
    reverse direction starts at each sequence's last valid step), as torch's ``h_n`` and Keras'
    ``Bidirectional`` give. The backward half at the last valid step had read only that step."""
    last = last_valid(out, lengths)
    if not bidirectional:
        return last
    half = out.shape[-1] // 2
    return torch.cat([last[..., :half], out[:, 0, half:]], -1)


class SequenceNet(nn.Module):
    """``(B, T)`` token ids (``vocab_size``) or ``(B, T, F)`` features (``input_size``)
    -> encoder (``arch``) -> linear head of ``out_size``.

    ``many_to_one=True``: ``forward`` returns ``(B, out_size)`` from the last valid step
    (``lengths``; a bidirectional encoder's backward half from step 0, see :func:`summary`);
    else ``(B, T, out_size)``. Called ``model(x, state=None, lengths=None, step=0) -> (output,
    state)``; ``step``: the time index of ``x``'s first step when a
    sequence is fed in pieces with its state carried (step-by-step decoding).
    """

    def __init__(
        self,
        arch: dict[str, Any],
        out_size: int,
        *,
        vocab_size: int | None = None,
        input_size: int | None = None,
        embedding_dim: int = 32,
        many_to_one: bool = False,
        bidirectional: bool = False,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        if (vocab_size is None) == (input_size is None):
            raise ValueError("give exactly one of vocab_size (token inputs) or input_size (features)")
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx) if vocab_size else None
        extra = {"batch_first": True, **({"bidirectional": True} if bidirectional else {})}
        self.encoder = build_recurrent(arch, embedding_dim if vocab_size else input_size, **extra)
        self.head = nn.Linear(encoder_output_size(self.encoder), out_size)
        self.many_to_one = many_to_one

    def forward(
        self, x: Tensor, state: Any = None, lengths: Tensor | None = None, step: int = 0
    ) -> tuple[Tensor, Any]:
        h = self.embed(x) if self.embed is not None else x
        kw = {"lengths": lengths.cpu()} if lengths is not None else {}
        kw.update(step_kwargs(self.encoder, step))
        out, state = self.encoder(h, state, **kw)
        if self.many_to_one:
            out = summary(out, lengths, splits_directions(self.encoder))
        return self.head(out), state


@torch.no_grad()
def accuracy(pred: Tensor, target: Tensor, ignore_index: int = -100) -> float:
    """Fraction of ``pred == target`` over positions where ``target != ignore_index``."""
    keep = target != ignore_index
    total = int(keep.sum())
    # integer counts, one float64 division: a float32 mean gave 2/5 as 0.4000000059604645
    return int((pred[keep] == target[keep]).sum()) / total if total else float("nan")
