"""Padded batches with ``lengths=``: a recurrent layer's packed call, padded back.

Shared by :class:`~rnnkit.layers.RecurrentStack` and the time-parallel layers
(:mod:`rnnkit.parallel`), which take packed input and run ``lengths=`` through it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import _checks, dispatch


def forward_padded(module: nn.Module, input: Tensor, hx, lengths, step: int = 0):
    """``module(input, hx, lengths, step)`` for a padded batch with valid ``lengths (B,)``: the
    packed call's outputs padded back (zeros past each length) and its final state. ``module``
    is a recurrent layer taking packed input (:class:`RecurrentStack`, the time-parallel layers,
    which take no ``step``)."""
    if isinstance(input, PackedSequence):  # ("input must be a torch.Tensor" named no cause)
        _checks.fail("lengths= is for a padded tensor input; a PackedSequence carries its own lengths")
    batch_dim = 0 if module.batch_first else 1  # may be empty, as without lengths= (a 2-D input fails below)
    _checks.check_input(input, module.input_size, False, module._ref, batch_dim)
    if input.dim() != 3:
        _checks.fail(f"lengths= needs a batched 3-D input, got shape {tuple(input.shape)}")
    T = input.shape[1] if module.batch_first else input.shape[0]
    B = input.shape[0] if module.batch_first else input.shape[1]
    lengths = _checks.check_lengths(lengths, B, T)
    extra = (None, step) if step else ()
    if B == 0:  # no sequence to pack: the dense call's empty outputs and states
        return module(input, hx, *extra)
    if input.is_complex() and input.requires_grad and torch.is_grad_enabled():
        # torch's pack_padded_sequence has no complex derivative: its error named neither
        raise _checks.RecurrentDtypeError(
            f"lengths= cannot differentiate a complex input ({input.dtype}): torch's packing has no "
            "complex derivative; detach the input (parameters and hx still get gradients) or omit lengths="
        )
    with dispatch.packing("lengths= is"):
        packed = pack_padded_sequence(input, lengths, module.batch_first, enforce_sorted=False)
    out, state = module(packed, hx, *extra)
    with dispatch.packing("lengths= is"):
        out, _ = pad_packed_sequence(out, module.batch_first, total_length=T)
    return out, state
