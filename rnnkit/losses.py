"""Activation regularization (AR) and temporal activation regularization (TAR).

Merity, McCann & Socher (2017), "Revisiting Activation Regularization for Language RNNs",
used in AWD-LSTM (Merity et al. 2017)::

    AR  = α · mean_t,b,f( (m ⊙ h_t)^2 )          on the (dropped) output of the last layer
    TAR = β · mean_t,b,f( (h_t − h_{t−1})^2 )    on the undropped output, t ≥ 1

Both accept dense outputs ``(T, B, F)`` (``(B, T, F)`` with ``batch_first``), optionally with
``lengths`` ``(B,)`` (integers in ``[1, T]``, as the layers take them) so padding is ignored, or
a ``PackedSequence``. The mean runs over the valid elements only; for dense input without
``lengths`` it is exactly AWD-LSTM's ``h.pow(2).mean()`` and ``(h[1:] - h[:-1]).pow(2).mean()``.
Over no element (an empty batch, no feature; no sequence of two steps for TAR) both are zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from . import _checks
from .regularizers import packed_rows

__all__ = ["activation_regularization", "temporal_activation_regularization", "ar", "tar"]


def _time_major(output: Tensor, batch_first: bool) -> Tensor:
    if not isinstance(batch_first, bool):  # as LockedDropout's (a true string swaps time and batch)
        raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
    if not isinstance(output, Tensor) or output.dim() != 3:
        got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"expected a 3-D output (T, B, F) or (B, T, F) with batch_first, got {got}")
    return output.transpose(0, 1) if batch_first else output


def _check_packed(output: Tensor | PackedSequence, lengths) -> bool:
    """Whether ``output`` is a ``PackedSequence``; one given with ``lengths`` is a ``ValueError``
    (its lengths were ignored, silently: the loss counted every packed step)."""
    packed = isinstance(output, PackedSequence)
    if packed and lengths is not None:
        raise ValueError("lengths= is for a padded tensor output; a PackedSequence carries its own lengths")
    return packed


def _check_coef(name: str, v) -> None:
    # a string failed as an indexing error deep in torch, NaN or inf made the whole loss NaN. A
    # 0-d real tensor (an annealed or learned coefficient; an integer one as an int) is taken
    # unread: a CUDA one would sync
    if isinstance(v, Tensor) and v.dim() == 0 and v.dtype != torch.bool and not v.is_complex():
        return
    if not _checks.is_real(v) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number (or a 0-d real tensor), got {v!r}")


def _mean_square(x: Tensor) -> Tensor:
    """Mean of ``x ** 2``; zero for no element (torch's mean of nothing is NaN, which poisons a
    summed loss: the layers' output for an empty batch, or of no feature)."""
    return x.pow(2).mean() if x.numel() else x.new_zeros(())


def _valid(lengths: Tensor | None, T: int, B: int, device) -> Tensor | None:
    """``(T, B)`` boolean mask of valid steps, or None when every step is valid."""
    if lengths is None:
        return None
    lengths = _checks.as_lengths(lengths)
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
    # integers in [1, T], as the layers take them: a length past T, or fractional, would
    # otherwise be silently clipped or rounded up by the comparison below
    lengths = _checks.check_lengths(lengths, B, T).to(device)
    return torch.arange(T, device=device).unsqueeze(1) < lengths.unsqueeze(0)


def activation_regularization(
    output: Tensor | PackedSequence,
    alpha: float = 2.0,
    *,
    batch_first: bool = False,
    lengths: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """AR: ``alpha`` (a finite number) times the mean square of ``output`` over its valid
    elements (a scalar; zero when there is none: an empty batch)."""
    _check_coef("alpha", alpha)
    if _check_packed(output, lengths):
        return alpha * _mean_square(output.data)
    h = _time_major(output, batch_first)
    valid = _valid(lengths, h.shape[0], h.shape[1], h.device)
    if valid is None:
        return alpha * _mean_square(h)
    return alpha * _mean_square(h[valid])


def temporal_activation_regularization(
    output: Tensor | PackedSequence,
    beta: float = 1.0,
    *,
    batch_first: bool = False,
    lengths: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """TAR: ``beta`` (a finite number) times the mean square of ``h_t − h_{t−1}`` over consecutive
    valid steps of each sequence (a scalar; zero when no sequence has two steps)."""
    _check_coef("beta", beta)
    if _check_packed(output, lengths):
        data, bs = output.data, output.batch_sizes
        if len(bs) < 2:
            return data.new_zeros(())
        starts = torch.cumsum(bs, 0) - bs
        # Row of (t + 1, j) minus row of (t, j) for every sequence j alive at step t + 1.
        nxt = torch.arange(int(bs[0]), int(bs.sum()))
        t_next = torch.repeat_interleave(torch.arange(1, len(bs)), bs[1:])
        prev = starts[t_next - 1] + packed_rows(bs)[nxt]
        nxt, prev = nxt.to(data.device), prev.to(data.device)
        return beta * _mean_square(data[nxt] - data[prev])
    h = _time_major(output, batch_first)
    valid = _valid(lengths, h.shape[0], h.shape[1], h.device)
    if h.shape[0] < 2 or h.shape[1] == 0:  # no sequence with two steps (none at all: an empty batch)
        return h.new_zeros(())
    diff = h[1:] - h[:-1]
    if valid is None:
        return beta * _mean_square(diff)
    return beta * _mean_square(diff[valid[1:]])


ar = activation_regularization
tar = temporal_activation_regularization
