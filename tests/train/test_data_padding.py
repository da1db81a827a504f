"""pad_collate / PadCollate (padding variable-length items into a batch) and length_mask."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from rnnkit.data import PadCollate, length_mask, pad_collate


def test_pad_collate_sequences_and_targets():
    items = [
        (torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4])),
        (torch.tensor([5]), torch.tensor([6])),
    ]
    b = pad_collate(items)
    assert b.inputs.tolist() == [[1, 5], [2, 0], [3, 0]]  # (T, B)
    assert b.targets.tolist() == [[2, 6], [3, -100], [4, -100]]
    assert b.lengths.tolist() == [3, 1] and b.packed is None
    bf = pad_collate(items, batch_first=True, pack=True, padding_value=9)
    assert bf.inputs.tolist() == [[1, 2, 3], [5, 9, 9]]
    assert isinstance(bf.packed, PackedSequence)
    assert bf.packed.batch_sizes.tolist() == [2, 1, 1]
    assert length_mask(b.lengths).tolist() == [[True, True], [True, False], [True, False]]


def test_pad_collate_labels_and_features():
    items = [(torch.randn(4, 3), 1), (torch.randn(2, 3), 0)]
    b = PadCollate(batch_first=True)(items)
    assert b.inputs.shape == (2, 4, 3) and b.targets.tolist() == [1, 0]
    assert torch.equal(b.inputs[1, 2:], torch.zeros(2, 3))
    single = pad_collate([torch.arange(2), torch.arange(3)])
    assert single.targets is None and single.inputs.shape == (3, 2)
    with pytest.raises(ValueError, match="item 1: expected a sequence"):
        pad_collate([torch.arange(2), torch.tensor(5)])


def test_pad_collate_refuses_a_padding_value_the_dtype_cannot_hold():
    """pad_sequence casts the padding value to the tensors' dtype: -100 padded bool targets with
    True (a real label, counted by the loss and count_tokens), uint8 ones failed with torch's bare
    overflow error, 0.5 padded token ids with 0. Each is now a ValueError naming value and dtype."""
    bools = [(torch.ones(3, 2), torch.tensor([True, False, True])), (torch.ones(1, 2), torch.tensor([True]))]
    with pytest.raises(ValueError, match=r"target_padding_value=-100 .* dtype torch.bool"):
        pad_collate(bools)
    ok = pad_collate(bools, target_padding_value=False, batch_first=True)  # the user's choice
    assert ok.targets.tolist() == [[True, False, True], [True, False, False]]
    u8 = [(torch.ones(2, 1), torch.tensor([1, 0], dtype=torch.uint8)), (torch.ones(1, 1), torch.tensor([1]))]
    with pytest.raises(ValueError, match=r"target_padding_value=-100 .* dtype torch.uint8"):
        pad_collate([u8[0], (torch.ones(1, 1), torch.tensor([1], dtype=torch.uint8))])
    with pytest.raises(ValueError, match=r"padding_value=0.5 .* inputs' dtype torch.int64"):
        pad_collate([torch.tensor([1, 2]), torch.tensor([3])], padding_value=0.5)
    # what every dtype holds still pads as before: ints, floats (any value), a float 0.0 in ids
    assert pad_collate([torch.tensor([1, 2]), torch.tensor([3])], padding_value=0.0).inputs.tolist() == [
        [1, 3],
        [2, 0],
    ]
    b = pad_collate([(torch.ones(2, 1), torch.tensor([0.5, 1.0])), (torch.ones(1, 1), torch.tensor([2.0]))])
    assert b.targets[1, 1] == -100 and pad_collate(u8).targets.tolist() == [[1, 1], [0, -100]]  # promoted


def test_pad_collate_target_layout_does_not_depend_on_the_batch():
    """Multi-hot labels of size 4: a batch whose inputs all have length 4 was read as sequences,
    targets (4, B) instead of (B, 4). sequence_targets=False/True fixes the layout."""
    labels = [(torch.randn(L, 3), torch.tensor([1.0, 0.0, 1.0, L % 2])) for L in (3, 6, 4, 4)]
    labels_of = PadCollate(sequence_targets=False)
    assert labels_of(labels[:2]).targets.shape == labels_of(labels[2:]).targets.shape == (2, 4)
    assert torch.equal(labels_of(labels[2:]).targets, torch.stack([t for _, t in labels[2:]]))
    assert PadCollate()(labels[2:]).targets.shape == (4, 2)  # the default: sequences, as before
    # the default reads labels unless *every* target has its input's length (one of two does here)
    assert torch.equal(PadCollate()(labels[::2]).targets, torch.stack([labels[0][1], labels[2][1]]))
    seqs = [(torch.randn(L, 3), torch.arange(L)) for L in (3, 1)]
    b = pad_collate(seqs, sequence_targets=True)
    assert b.targets.tolist() == [[0, 0], [1, -100], [2, -100]]
    with pytest.raises(ValueError, match=r"item 1: .* of length 1 \(its input's\), got shape \(2,\)"):
        pad_collate([seqs[0], (torch.randn(1, 3), torch.arange(2))], sequence_targets=True)
    with pytest.raises(ValueError, match=r"item 0 has \(3,\), item 1 has \(1,\)"):
        pad_collate(seqs, sequence_targets=False)
    with pytest.raises(ValueError, match="sequence_targets must be None, True or False, got 'yes'"):
        PadCollate(sequence_targets="yes")


@pytest.mark.parametrize("batch_first", [False, True])
def test_pad_collate_promotes_mixed_dtypes(batch_first):
    """pad_sequence casts every item to the first one's dtype: float values after an int64 item
    were truncated ([0.5, 0.7] became [0, 0]), depending on the order of the batch."""
    ints, floats = torch.tensor([1, 2]), torch.tensor([0.5, 0.7, 0.9])
    for items in ([ints, floats], [floats, ints]):
        b = pad_collate(items, batch_first=batch_first, pack=True)
        x = b.inputs if batch_first else b.inputs.t()
        assert x.dtype == floats.dtype
        for row, it in zip(x, items, strict=True):
            assert torch.equal(row[: len(it)], it.to(floats.dtype))
        assert b.packed.data.dtype == floats.dtype
    b = pad_collate([(torch.arange(2), ints), (torch.arange(3), floats)], batch_first=True)
    assert b.targets.tolist() == [[1.0, 2.0, -100.0], [0.5, 0.7, 0.9]]
    assert pad_collate([ints, ints]).inputs.dtype == torch.int64  # one dtype: unchanged


def test_pad_collate_feature_shape_mismatch_names_the_item():
    """Items of different feature shapes failed inside pad_sequence with a RuntimeError that
    named neither the item nor the shapes."""
    with pytest.raises(ValueError, match=r"item 2: input .* expected \(T, 2\) like item 0, got \(2, 3\)"):
        pad_collate([torch.zeros(3, 2), torch.zeros(1, 2), torch.zeros(2, 3)])
    with pytest.raises(ValueError, match=r"item 1: input .* expected \(T\) like item 0, got \(2, 3\)"):
        pad_collate([torch.zeros(3), torch.zeros(2, 3)])
    items = [(torch.arange(3), torch.zeros(3, 2)), (torch.arange(2), torch.zeros(2, 3))]
    with pytest.raises(ValueError, match=r"item 1: target .* expected \(T, 2\) like item 0, got \(2, 3\)"):
        pad_collate(items)


def test_length_mask_checks_its_arguments():
    """A max_len below the longest length cut the mask short silently (its last real steps were
    missing); 2-D or empty lengths failed with unrelated errors; a list raised AttributeError."""
    lengths = torch.tensor([2, 3, 1])
    with pytest.raises(ValueError, match="max_len=2 is shorter than the longest sequence, of length 3"):
        length_mask(lengths, 2)
    with pytest.raises(ValueError, match=r"shape \(B,\), got shape \(1, 3\)"):
        length_mask(lengths[None])
    empty = torch.tensor([], dtype=torch.long)
    with pytest.raises(ValueError, match=r"lengths is empty \(B = 0\): pass max_len"):
        length_mask(empty)
    assert length_mask(empty, 5).shape == (5, 0)  # an empty batch, as torch.nn accepts them
    assert length_mask([], 5).shape == (5, 0)  # [] reads as float32: still no fractional length
    assert length_mask([2, 3, 1], batch_first=True).tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    assert length_mask(lengths, 4).shape == (4, 3) and not length_mask(lengths, 4)[3].any()


@pytest.mark.parametrize("lengths", [[2.5, 1.0], [2.0, 1.0], [True, False]])
def test_length_mask_refuses_lengths_that_are_not_integers(lengths):
    """Fractional lengths were rounded up by the comparison (2.5 gave 3 real steps), float and
    bool ones taken as counts, silently: they are refused, as the layers refuse them."""
    with pytest.raises(ValueError, match=r"lengths must be integers, got dtype torch\.(float64|bool)"):
        length_mask(torch.tensor(lengths))


def test_length_mask_refuses_negative_lengths_and_max_len():
    """A negative length gave a sequence of no step and a float max_len a mask of its ceiling's
    steps, silently."""
    with pytest.raises(ValueError, match=r"lengths must be >= 0, got lengths\[1\] = -1"):
        length_mask([2, -1])
    with pytest.raises(ValueError, match=r"max_len must be a non-negative int or None, got 2\.5"):
        length_mask([2, 1], 2.5)
    assert length_mask([0, 2]).tolist() == [[False, True], [False, True]]  # zero stays a length


def test_pad_collate_items_must_share_one_form():
    """Only item 0 decided whether items were (sequence, target) pairs: a (T, F) tensor after a
    pair was read as a pair of its rows, and a list of token ids as a pair of two numbers."""
    pair, seq = (torch.arange(3), torch.arange(3)), torch.zeros(3, 2)
    with pytest.raises(
        ValueError, match=r"item 1: expected a \(sequence, target\) pair like item 0, got a Tensor"
    ):
        pad_collate([pair, seq])
    with pytest.raises(
        ValueError, match=r"item 1: expected a sequence like item 0, got a \(sequence, target\) pair"
    ):
        pad_collate([torch.arange(2), pair])
    # a list of numbers is a sequence of token ids, as torch.as_tensor reads it
    b = pad_collate([[1, 2, 3], [4, 5]])
    assert b.inputs.tolist() == [[1, 4], [2, 5], [3, 0]] and b.targets is None
    assert b.lengths.tolist() == [3, 2]
    b = pad_collate([([1, 2], [2, 3]), [torch.arange(1), torch.tensor([7])]], batch_first=True)
    assert b.inputs.tolist() == [[1, 2], [0, 0]] and b.targets.tolist() == [[2, 3], [7, -100]]
    with pytest.raises(ValueError, match=r"item 0: expected a sequence .* got a tuple of 3 elements"):
        pad_collate([(torch.arange(2), torch.arange(2), "meta")])


def test_pad_collate_names_the_item_of_a_target_that_is_not_numbers():
    """A label left as a string failed inside torch.as_tensor ("new(): invalid data type 'str'"),
    naming neither the item nor what a target may be."""
    items = [(torch.arange(2), 1), (torch.arange(3), "noun")]
    with pytest.raises(ValueError, match=r"item 1: expected a target .* got a str"):
        pad_collate(items)


def test_pad_collate_one_element_item_is_an_error():
    """A tuple of one list, ``([1., 2., 3.],)``, was read as one step of 3 features (and a tuple of
    one tensor, a TensorDataset's item, failed as "not a sequence"): it could as well be a sequence
    without a target. Both are now one error that says what to pass."""
    for item in (([1.0, 2.0, 3.0],), [[1.0, 2.0, 3.0]], (torch.zeros(4, 2),)):
        with pytest.raises(ValueError, match=r"item 0: a (tuple|list) of one element .* is ambiguous"):
            pad_collate([item])
    with pytest.raises(ValueError, match=r"item 1: a tuple of one element"):
        pad_collate([torch.zeros(2, 3), (torch.zeros(1, 3),)])
    # unambiguous forms are unchanged: one number is a sequence of length 1, a (1, F) tensor one step
    assert pad_collate([(5,), [7]]).inputs.tolist() == [[5, 7]]
    assert pad_collate([torch.tensor([[1.0, 2.0, 3.0]])]).inputs.shape == (1, 1, 3)


def test_pad_collate_names_items_that_are_no_list():
    """pad_collate(None) failed on "object of type 'NoneType' has no len()", naming no argument."""
    with pytest.raises(TypeError, match="items must be a list of sequences or .* pairs, got NoneType$"):
        pad_collate(None)
    with pytest.raises(ValueError, match="cannot collate an empty batch"):
        PadCollate()([])
