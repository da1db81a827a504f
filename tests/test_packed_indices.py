"""A PackedSequence's sorted/unsorted_indices at a large batch: checked as at a small one (a
permutation each, each other's inverse), in tensor ops rather than Python lists."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit
from rnnkit import _checks

B = 1024  # past _checks._LIST_MAX: the tensor-op path


def _packed(sorted_idx, unsorted_idx=None):
    return PackedSequence(torch.randn(B, 3), torch.tensor([B]), sorted_idx, unsorted_idx)


def test_valid_indices_at_a_large_batch_are_not_read_into_lists(monkeypatch):
    """Python lists cost ~0.2 us a sequence: ~100 us at B = 1024 for every forward, half the time
    of a small layer's. Valid indices are cleared in tensor ops there."""
    lengths = torch.randint(1, 4, (B,))
    packed = pack_padded_sequence(torch.randn(3, B, 3), lengths, enforce_sorted=False)
    assert _checks.check_packed(packed) == B

    real = torch.Tensor.tolist

    def tolist(self):  # (batch_sizes, T entries, is read as a list: that costs little)
        assert self.numel() != B, "a valid PackedSequence's indices read into a list"
        return real(self)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    assert _checks.check_packed(packed) == B
    # packed sorted: no indices at all
    ordered = pack_padded_sequence(torch.randn(3, B, 3), lengths.sort(descending=True).values)
    assert ordered.sorted_indices is None and _checks.check_packed(ordered) == B


def test_bad_indices_at_a_large_batch_are_refused():
    perm = torch.randperm(B)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(B)
    rnnkit.LSTM(3, 4)(_packed(perm, inverse))  # valid
    repeat = perm.clone()
    repeat[5] = repeat[6]
    with pytest.raises(ValueError, match=r"sorted_indices must be a permutation of 0..1023"):
        _checks.check_packed(_packed(repeat, inverse))
    out_of_range = perm.clone()
    out_of_range[out_of_range == 0] = B
    with pytest.raises(ValueError, match=r"sorted_indices must be a permutation"):
        _checks.check_packed(_packed(out_of_range, inverse))
    with pytest.raises(ValueError, match=r"unsorted_indices must be a permutation"):
        _checks.check_packed(_packed(perm, repeat))
    with pytest.raises(ValueError, match=r"unsorted_indices must be the inverse of its sorted_indices"):
        _checks.check_packed(_packed(perm, perm.roll(1)))
    # another integer dtype: the lists' check, as at a small batch
    _checks.check_packed(_packed(perm.int(), inverse.int()))
