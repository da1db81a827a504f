"""Collating variable-length sequences: padded tensors + lengths (+ PackedSequence)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_sequence

from rnnkit._checks import as_lengths, is_int

__all__ = ["PaddedBatch", "PadCollate", "pad_collate", "length_mask"]


class PaddedBatch(NamedTuple):
    """A batch of variable-length sequences.

    ``inputs``: ``(T_max, B, *)`` or ``(B, T_max, *)`` (``batch_first``), padded with
    ``padding_value``. ``targets``: padded the same way (with ``target_padding_value``,
    by default -100, ``cross_entropy``'s ``ignore_index``) when they are sequences,
    stacked ``(B, *)`` when they are per-sequence labels (see ``PadCollate``'s
    ``sequence_targets``), ``None`` when items have no target. ``lengths``: ``(B,)`` int64
    on CPU. ``packed``: a ``PackedSequence`` of the inputs when requested, else ``None``.
    """

    inputs: Tensor
    targets: Tensor | None
    lengths: Tensor
    packed: PackedSequence | None = None


def length_mask(
    lengths: Tensor | Sequence[int], max_len: int | None = None, *, batch_first: bool = False
) -> Tensor:
    """Boolean mask, True on real steps: ``(T, B)``, or ``(B, T)`` with ``batch_first``.

    ``lengths``: ``(B,)`` integers ``>= 0``; ``T`` is ``max_len`` (an int), by default
    ``lengths.max()``, and may not be shorter than the longest sequence (its last steps would be
    missing from the mask).
    """
    lengths = as_lengths(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (B,), got shape {tuple(lengths.shape)}")
    # the comparison below would round a fractional length up and count a bool as 0 or 1
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be integers, got dtype {lengths.dtype}")
    if lengths.numel() and int(lengths.min()) < 0:
        i = int(lengths.argmin())
        raise ValueError(f"lengths must be >= 0, got lengths[{i}] = {int(lengths[i])}")
    if max_len is not None and not is_int(max_len):
        raise ValueError(f"max_len must be a non-negative int or None, got {max_len!r}")
    if lengths.numel() == 0 and max_len is None:  # an empty batch has no longest sequence
        raise ValueError("lengths is empty (B = 0): pass max_len for the mask of an empty batch")
    longest = int(lengths.max()) if lengths.numel() else 0
    if max_len is not None and max_len < longest:
        raise ValueError(f"max_len={max_len} is shorter than the longest sequence, of length {longest}")
    max_len = longest if max_len is None else max_len
    mask = torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)
    return mask if batch_first else mask.t()


def _common_dtype(tensors: list[Tensor]) -> list[Tensor]:
    """The tensors cast to their promoted dtype, as ``torch.stack`` does: ``pad_sequence`` casts
    all to the first one's, so ``[0.5]`` after an int64 item became ``[0]``."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) for t in tensors]


def _check_features(seqs: list[Tensor], what: str) -> None:
    """Sequences ``(T_i, *)`` are padded along time only: every ``*`` must be item 0's."""
    for i, s in enumerate(seqs):
        if s.shape[1:] != seqs[0].shape[1:]:
            expected = "(T" + "".join(f", {d}" for d in seqs[0].shape[1:]) + ")"
            raise ValueError(
                f"item {i}: {what} sequences are padded along time only and need one feature shape: "
                f"expected {expected} like item 0, got {tuple(s.shape)}"
            )


def _check_padding(value: float, dtype: torch.dtype, what: str, name: str) -> None:
    """``pad_sequence`` casts the padding value to the tensors' dtype: in a bool or integer one
    a value it cannot hold became another (``-100`` in bool targets: ``True``, a real label; ``0.5``
    in token ids: ``0``) or a bare overflow error. Floating dtypes hold any value (rounded)."""
    if dtype.is_floating_point or dtype.is_complex:
        return
    lo, hi = (0, 1) if dtype == torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    if not (isinstance(value, numbers.Real) and float(value).is_integer() and lo <= value <= hi):
        raise ValueError(
            f"{name}={value!r} cannot be stored in the {what}' dtype {dtype} (an integer in [{lo}, {hi}] "
            f"can): give the {what} as int64 or floating tensors, or pass a {name} that {dtype} holds"
        )


def _leads_with_non_number(item: Any, n: int) -> bool:
    """A tuple or list of ``n`` elements whose first is not a number (a list of numbers, such as
    token ids, is a sequence, as ``torch.as_tensor`` reads it)."""
    if not isinstance(item, (tuple, list)) or len(item) != n:
        return False
    first = item[0]
    return not (isinstance(first, numbers.Number) or getattr(first, "shape", None) == ())


def _is_pair(item: Any) -> bool:
    """A ``(sequence, target)`` pair: a tuple or list of two elements whose first is not a number."""
    return _leads_with_non_number(item, 2)


def _is_one_tuple(item: Any) -> bool:
    """A tuple or list of one element that is not a number: a ``(sequence,)`` item without a
    target (as ``TensorDataset`` gives) or a sequence of one step of features? Neither reading is
    documented, and ``torch.as_tensor`` took a list for one step and failed on a tensor."""
    return _leads_with_non_number(item, 1)


def _form(item: Any) -> str:
    """How an item reads, for error messages."""
    if _is_pair(item):
        return "a (sequence, target) pair"
    if isinstance(item, (tuple, list)):
        return f"a {type(item).__name__} of {len(item)} elements"
    shape = getattr(item, "shape", None)
    return f"a {type(item).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


def _as_sequence(x: Any, i: int, item: Any) -> Tensor:
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"item {i}: expected a sequence (a tensor, an array or a list of numbers) or a "
            f"(sequence, target) pair, got {_form(item)}"
        ) from None


def _as_target(y: Any, i: int) -> Tensor:
    try:
        return torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):  # a label left as a string, a ragged list
        raise ValueError(
            f"item {i}: expected a target (a tensor, an array, a number or a list of numbers), got {_form(y)}"
        ) from None


class PadCollate:
    """Picklable ``collate_fn`` for ``DataLoader`` (works with worker processes).

    Items are a sequence ``(T_i, *)`` (a tensor, an array, or a list such as token ids, read by
    ``torch.as_tensor``), or a pair ``(sequence, target)`` -- a tuple or list of two elements
    whose first is not a number -- where the target is a sequence ``(T_i, *)`` or a label
    tensor/number. All items of a batch must have one form (a mix is a ``ValueError`` naming the
    item): a list of two numbers is a sequence of length 2, not a pair; a tuple or list of one element
    that is not a number is ambiguous (a sequence without a target, or one step of features?): a
    ``ValueError`` naming the item. Items of different dtypes are
    batched in their promoted dtype (as ``torch.stack`` does), not cast to the first one's. A
    padding value that dtype cannot hold (the default -100 in bool or uint8 sequence targets, a
    fractional one in integer inputs) is a ``ValueError``: it would be stored as another value.

    ``sequence_targets`` fixes how targets are batched: ``True`` pads them as sequences (each
    must have its input's length), ``False`` stacks them as per-sequence labels ``(B, *)`` (all
    of one shape). ``None`` (the default) decides for each batch: sequences when every target's
    first dimension equals its input's length, else labels. That is data-dependent for label
    vectors: multi-hot labels ``(K,)`` are read as sequences in a batch whose inputs all have
    length ``K``, and come out time-major ``(K, B)`` instead of ``(B, K)``; pass
    ``sequence_targets=False`` for them (and ``True`` for sequences, to get an error rather
    than labels when a target's length is wrong).
    """

    def __init__(
        self,
        *,
        batch_first: bool = False,
        padding_value: float = 0,
        target_padding_value: float = -100,
        pack: bool = False,
        sequence_targets: bool | None = None,
    ) -> None:
        if sequence_targets not in (None, True, False):
            raise ValueError(f"sequence_targets must be None, True or False, got {sequence_targets!r}")
        self.batch_first, self.padding_value = batch_first, padding_value
        self.target_padding_value, self.pack = target_padding_value, pack
        self.sequence_targets = sequence_targets

    def __call__(self, items: Sequence[Any]) -> PaddedBatch:
        if not hasattr(items, "__len__"):  # (else "object of type 'NoneType' has no len()")
            raise TypeError(
                f"items must be a list of sequences or (sequence, target) pairs, got {type(items).__name__}"
            )
        if len(items) == 0:
            raise ValueError("cannot collate an empty batch")
        # every item, not only item 0: a (T, F) tensor after pairs read as a pair of its rows
        paired = _is_pair(items[0])
        for i, it in enumerate(items):
            if _is_one_tuple(it):
                raise ValueError(
                    f"item {i}: a {type(it).__name__} of one element that is not a number is ambiguous "
                    f"(a sequence without a target, or one step of features?): pass the sequence (T, *) "
                    f"itself, a tensor of shape (1, F) for one step, or a (sequence, target) pair"
                )
            if _is_pair(it) != paired:
                expected = "a (sequence, target) pair" if paired else "a sequence"
                raise ValueError(f"item {i}: expected {expected} like item 0, got {_form(it)}")
        seqs = [_as_sequence(it[0] if paired else it, i, it) for i, it in enumerate(items)]
        for i, s in enumerate(seqs):
            if s.dim() < 1 or s.shape[0] == 0:
                raise ValueError(
                    f"item {i}: expected a sequence of shape (T>=1, *), got shape {tuple(s.shape)}"
                )
        _check_features(seqs, "input")
        lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
        seqs = _common_dtype(seqs)
        _check_padding(self.padding_value, seqs[0].dtype, "inputs", "padding_value")
        inputs = pad_sequence(seqs, batch_first=self.batch_first, padding_value=self.padding_value)
        targets = None
        if paired:
            tgts = [_as_target(it[1], i) for i, it in enumerate(items)]
            aligned = [t.dim() >= 1 and t.shape[0] == s.shape[0] for t, s in zip(tgts, seqs, strict=True)]
            sequences = all(aligned) if self.sequence_targets is None else self.sequence_targets
            if sequences:
                if not all(aligned):
                    i = aligned.index(False)
                    raise ValueError(
                        f"item {i}: sequence_targets=True expects a target of length {seqs[i].shape[0]} "
                        f"(its input's), got shape {tuple(tgts[i].shape)}"
                    )
                _check_features(tgts, "target")
                tgts = _common_dtype(tgts)
                _check_padding(self.target_padding_value, tgts[0].dtype, "targets", "target_padding_value")
                targets = pad_sequence(
                    tgts, batch_first=self.batch_first, padding_value=self.target_padding_value
                )
            else:
                for i, t in enumerate(tgts):
                    if t.shape != tgts[0].shape:
                        raise ValueError(
                            f"per-sequence labels are stacked and need one shape: item 0 has "
                            f"{tuple(tgts[0].shape)}, item {i} has {tuple(t.shape)}"
                        )
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
    sequence_targets: bool | None = None,
) -> PaddedBatch:
    """Pad a list of sequences (or ``(sequence, target)`` pairs); see :class:`PadCollate`."""
    return PadCollate(
        batch_first=batch_first,
        padding_value=padding_value,
        target_padding_value=target_padding_value,
        pack=pack,
        sequence_targets=sequence_targets,
    )(items)
