"""Collating variable-length sequences: padded tensors + lengths (+ PackedSequence)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_sequence

__all__ = ["PaddedBatch", "PadCollate", "pad_collate", "length_mask"]


class PaddedBatch(NamedTuple):
    """A batch of variable-length sequences.

    ``inputs``: ``(T_max, B, *)`` or ``(B, T_max, *)`` (``batch_first``), padded with
    ``padding_value``. ``targets``: padded the same way (with ``target_padding_value``,
    by default -100, ``cross_entropy``'s ``ignore_index``) when they are sequences,
    stacked ``(B, *)`` when they are per-sequence labels, ``None`` when items have no
    target. ``lengths``: ``(B,)`` int64 on CPU. ``packed``: a ``PackedSequence`` of the
    inputs when requested, else ``None``.
    """

    inputs: Tensor
    targets: Tensor | None
    lengths: Tensor
    packed: PackedSequence | None = None


def length_mask(lengths: Tensor, max_len: int | None = None, *, batch_first: bool = False) -> Tensor:
    """Boolean mask, True on real steps: ``(T, B)``, or ``(B, T)`` with ``batch_first``."""
    max_len = int(lengths.max()) if max_len is None else max_len
    mask = torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)
    return mask if batch_first else mask.t()


class PadCollate:
    """Picklable ``collate_fn`` for ``DataLoader`` (works with worker processes).

    Items are a sequence tensor ``(T_i, *)``, or a pair ``(sequence, target)`` where the
    target is a sequence ``(T_i, *)`` or a label tensor/number.
    """

    def __init__(
        self,
        *,
        batch_first: bool = False,
        padding_value: float = 0,
        target_padding_value: float = -100,
        pack: bool = False,
    ) -> None:
        self.batch_first, self.padding_value = batch_first, padding_value
        self.target_padding_value, self.pack = target_padding_value, pack

    def __call__(self, items: Sequence[Any]) -> PaddedBatch:
        if len(items) == 0:
            raise ValueError("cannot collate an empty batch")
        paired = isinstance(items[0], (tuple, list))
        seqs = [torch.as_tensor(it[0] if paired else it) for it in items]
        for i, s in enumerate(seqs):
            if s.dim() < 1 or s.shape[0] == 0:
                raise ValueError(
                    f"item {i}: expected a sequence of shape (T>=1, *), got shape {tuple(s.shape)}"
                )
        lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
        inputs = pad_sequence(seqs, batch_first=self.batch_first, padding_value=self.padding_value)
        targets = None
        if paired:
            tgts = [torch.as_tensor(it[1]) for it in items]
            if all(t.dim() >= 1 and t.shape[0] == s.shape[0] for t, s in zip(tgts, seqs, strict=True)):
                targets = pad_sequence(
                    tgts, batch_first=self.batch_first, padding_value=self.target_padding_value
                )
            else:
                targets = torch.stack(tgts)
        packed = None
        if self.pack:
            packed = pack_padded_sequence(inputs, lengths, batch_first=self.batch_first, enforce_sorted=False)
        return PaddedBatch(inputs, targets, lengths, packed)


def pad_collate(
    items: Sequence[Any],
    *,
    batch_first: bool = False,
    padding_value: float = 0,
    target_padding_value: float = -100,
    pack: bool = False,
) -> PaddedBatch:
    """Pad a list of sequences (or ``(sequence, target)`` pairs); see :class:`PadCollate`."""
    return PadCollate(
        batch_first=batch_first,
        padding_value=padding_value,
        target_padding_value=target_padding_value,
        pack=pack,
    )(items)
