"""Drop-in interface errors: bad input, bad configuration and malformed PackedSequences raise clear errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkit

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


# -- bad input: clear errors naming expected and received values ------------------------
BAD = [
    (lambda m: m(torch.randn(5, 2, 4)), "input_size=3"),
    (lambda m: m(torch.randn(5, 2, 3, 1)), "got 4-D"),
    (lambda m: m(torch.randn(5, 2, 3, dtype=torch.float32)), "dtype torch.float32"),
    (lambda m: m(torch.randn(0, 2, 3)), "at least one time step"),
    (
        lambda m: m(torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(1, 2, 4))),
        r"\(2, 2, 4\)",
    ),
    (lambda m: m(torch.randn(5, 2, 3), torch.zeros(2, 2, 4)), "tuple"),
    (
        lambda m: m(torch.randn(5, 3), (torch.zeros(2, 2, 4),) * 2),
        r"expected h_0 of shape \(2, 4\)",
    ),
    (lambda m: m(torch.randn(5, 2, 3), lengths=[5, 6]), r"\[1, 5\]"),
    (lambda m: m(torch.randn(5, 2, 3), lengths=[5]), "one entry per sequence"),
    (lambda m: m(torch.randn(5, 2, 3), lengths=[0, 2]), r"\[1, 5\]"),
    # a bool mask was read as lengths of 1 and 0 (True, True: one step each), silently
    (lambda m: m(torch.randn(5, 2, 3), lengths=torch.tensor([True, True])), "integers, got dtype torch.bool"),
    (lambda m: m(torch.randn(5, 2, 3), lengths=[5.0, 2.0]), "integers, got dtype torch.float"),
    (lambda m: m([[1.0]]), "torch.Tensor"),
    # lengths= beside a PackedSequence said only "input must be a torch.Tensor, got PackedSequence"
    (
        lambda m: m(pack_padded_sequence(torch.randn(5, 2, 3), [5, 3]), lengths=[5, 3]),
        "a PackedSequence carries its own lengths",
    ),
]


@pytest.mark.parametrize("call,msg", BAD)
def test_bad_input_is_a_clear_value_error(call, msg):
    m = rnnkit.LSTM(3, 4, 2)
    with pytest.raises(ValueError, match=msg) as e:
        call(m)
    assert isinstance(e.value, RuntimeError)  # torch raises RuntimeError for these: both work


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_layers": 0}, "num_layers"),
        ({"dropout": 1.5}, "dropout"),
        ({"proj_size": 4}, "proj_size"),
        ({"impl": "fast"}, "impl"),
    ],
)
def test_bad_config(kw, msg):
    args = {"input_size": 3, "hidden_size": 4, **kw}
    with pytest.raises(ValueError, match=msg):
        rnnkit.LSTM(**args)


@pytest.mark.parametrize("cls", [rnnkit.LSTM, rnnkit.GRU, rnnkit.RNN, rnnkit.MinGRU, rnnkit.QRNN, rnnkit.LRU])
@pytest.mark.parametrize("value", ["no", 1, None])
def test_bidirectional_must_be_a_bool(cls, value):
    """bidirectional='no' built a bidirectional layer (the string is true) and None or 0 a
    unidirectional one, silently, where bias and batch_first are refused unless bools."""
    with pytest.raises(TypeError, match=f"bidirectional should be of type bool, got: {type(value).__name__}"):
        cls(3, 4, bidirectional=value)


@pytest.mark.parametrize("cls", [rnnkit.RNNCell, rnnkit.LSTMCell, rnnkit.GRUCell])
def test_cell_sizes_are_checked_naming_them(cls):
    """LSTMCell(3, -4) failed in torch.empty on 'negative dimension -16' (4 gates x -4) and a float
    size on 'argument size must be tuple of ints'; both now name the size. Zero stays allowed, as
    torch.nn's cells allow it."""
    with pytest.raises(ValueError, match="hidden_size must be a non-negative int, got -4"):
        cls(3, -4)
    with pytest.raises(ValueError, match="input_size must be a non-negative int, got -1"):
        cls(-1, 4)
    with pytest.raises(TypeError, match="hidden_size should be of type int, got: float"):
        cls(3, 4.0)
    out = cls(0, 4)(torch.randn(2, 0))
    assert (out[0] if isinstance(out, tuple) else out).shape == (2, 4)


@pytest.mark.parametrize("cls", [rnnkit.RNNCell, rnnkit.LSTMCell, rnnkit.GRUCell])
@pytest.mark.parametrize("value", ["no", 0, None])
def test_cell_bias_must_be_a_bool(cls, value):
    """LSTMCell(3, 4, bias='no') built a cell with biases (the string is true), silently, where the
    layers refuse a bias that is not a bool."""
    with pytest.raises(TypeError, match=f"bias should be of type bool, got: {type(value).__name__}"):
        cls(3, 4, bias=value)


@pytest.mark.parametrize("cell", [3, rnnkit.LSTMCell(3, 4)])
def test_step_cell_and_stack_need_an_rnnkit_cell(cell):
    """StepCell(3) failed on "'int' object has no attribute 'input_size'" and a make_cell that
    returns no Cell on "... has no attribute 'state_names'"; a module (a layer, a StepCell) too."""
    got = type(cell).__name__
    with pytest.raises(TypeError, match=rf"cell must be an rnnkit.cells.Cell \(e.g. .*\), got {got}$"):
        rnnkit.StepCell(cell)
    with pytest.raises(TypeError, match=f"make_cell must return an rnnkit.cells.Cell, got {got}$"):
        rnnkit.RecurrentStack(lambda n: cell, 3, 4)
    with pytest.raises(TypeError, match="make_cell must be a callable input_size -> Cell, got int$"):
        rnnkit.RecurrentStack(3, 3, 4)


@pytest.mark.parametrize("lengths, got", [("abc", "str (new(): "), ([5, None, 2], "list (Could not infer")])
def test_lengths_that_are_no_numbers_are_named(lengths, got):
    """lengths='abc' failed in torch's words "new(): invalid data type 'str'", [5, None, 2] on "Could
    not infer dtype of NoneType": neither named the argument."""
    from rnnkit.data import length_mask

    expected = "lengths must be a tensor or a sequence of ints (one per sequence), got "
    with pytest.raises(ValueError, match=re.escape(expected + got)):
        rnnkit.LSTM(3, 4)(torch.randn(5, 3, 3), lengths=lengths)
    with pytest.raises(ValueError, match=re.escape(expected + got)):
        length_mask(lengths)


def test_proj_size_true_is_refused_naming_it():
    """proj_size=True (an int to isinstance) failed deep in torch.empty on a bool size."""
    with pytest.raises(ValueError, match="proj_size must be a non-negative int, got True"):
        rnnkit.LSTM(3, 4, proj_size=True)


def test_cell_bad_input():
    with pytest.raises(ValueError, match="input_size=3"):
        rnnkit.GRUCell(3, 4)(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(2, 4\)"):
        rnnkit.GRUCell(3, 4)(torch.randn(2, 3), torch.zeros(3, 4))


# -- a malformed PackedSequence: its batch_sizes and indices are checked against its data --
PACKED_BAD = [
    # batch_sizes summing to fewer rows than the data: torch.nn drops the rest silently
    (lambda: PackedSequence(torch.randn(7, 3), torch.tensor([2, 2, 1, 1])), r"sum to the 7 rows.*got 6"),
    (lambda: PackedSequence(torch.randn(5, 3), torch.tensor([2, 2, 1, 1])), r"sum to the 5 rows.*got 6"),
    (lambda: PackedSequence(torch.randn(6, 3), torch.tensor([1, 2, 2, 1])), "non-increasing"),
    (lambda: PackedSequence(torch.randn(4, 3), torch.tensor([2, 2, 0])), "positive"),
    (lambda: PackedSequence(torch.randn(0, 3), torch.tensor([], dtype=torch.long)), "at least one"),
    (lambda: PackedSequence(torch.randn(4, 3), torch.tensor([2.0, 2.0])), "CPU int64 tensor, got 1-D cpu"),
    # int32: the loop and the fused path ran, torch's kernel and the time-parallel layers refused
    (lambda: PackedSequence(torch.randn(4, 3), torch.tensor([2, 2], dtype=torch.int32)), "int64"),
    # sorted_indices of another batch: a state of one sequence came back for two
    (
        lambda: PackedSequence(torch.randn(6, 3), torch.tensor([2, 2, 1, 1]), torch.tensor([0])),
        r"sorted_indices of shape \(2,\).*got \(1,\)",
    ),
    # sorted_indices with a repeat: one sequence's state came back for two (or, its inverse
    # computed by PackedSequence being uninitialized memory, an index error deep in torch)
    (
        lambda: PackedSequence(torch.randn(6, 3), torch.tensor([2, 2, 1, 1]), torch.tensor([0, 0])),
        r"sorted_indices must be a permutation of 0..1 \(each sequence once\), got \[0, 0\]",
    ),
    (
        lambda: PackedSequence(
            torch.randn(6, 3), torch.tensor([2, 2, 1, 1]), torch.tensor([1, 2]), torch.tensor([1, 0])
        ),  # fmt: skip
        r"sorted_indices must be a permutation of 0..1 .*got \[1, 2\]",
    ),
    (
        lambda: PackedSequence(
            *PackedSequence(torch.randn(6, 3), torch.tensor([2, 2, 1, 1]))[:2], None, torch.tensor([1, 1])
        ),  # fmt: skip
        r"unsorted_indices must be a permutation of 0..1 .*got \[1, 1\]",
    ),
    # two permutations, not each other's inverse: the states came back in another order
    (
        lambda: PackedSequence(
            torch.randn(9, 3), torch.tensor([3, 3, 3]), torch.tensor([1, 2, 0]), torch.tensor([1, 2, 0])
        ),  # fmt: skip
        r"unsorted_indices must be the inverse of its sorted_indices, got "
        r"unsorted_indices\[sorted_indices\[0\]\] = 2, expected 0",
    ),
]


PACKED_LAYERS = [
    lambda: rnnkit.LSTM(3, 4, impl="loop"),
    lambda: rnnkit.LSTM(3, 4, impl="fused"),
    lambda: rnnkit.LSTM(3, 4),  # torch's kernel
    lambda: rnnkit.GRU(3, 4),
    lambda: rnnkit.MinGRU(3, 4),
    lambda: rnnkit.QRNN(3, 4),
    lambda: rnnkit.LRU(3, 4),
]


@pytest.mark.parametrize("make", PACKED_LAYERS)
@pytest.mark.parametrize("packed,msg", PACKED_BAD)
def test_malformed_packed_sequence_is_a_clear_value_error(make, packed, msg):
    with pytest.raises(ValueError, match=msg) as e:
        make()(packed())
    assert isinstance(e.value, RuntimeError)
