"""The memory benchmarks as a library: their sizes are checked before anything is drawn."""

from __future__ import annotations

import numpy as np
import pytest

from rnnkit.datasets.synthetic import copy_memory, plus_one
from rnnkit.tasks import memory
from rnnkit.tasks.memory import arith, make_task


@pytest.mark.parametrize("digits", [True, 2.0, 2.5, "2", 0, 19])
def test_arith_refuses_digits_that_are_no_int_in_range(digits):
    """True was taken as one digit and failed formatting the numbers ('Invalid format specifier
    0Trued'); 2.0 and 2.5 failed inside torch.randint naming neither the argument nor the value."""
    with pytest.raises(ValueError, match=rf"digits must be in \[1, 18\] .*got {digits!r}"):
        arith(3, digits)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_arith_refuses_a_count_that_is_no_positive_int(n):
    """n=0 failed with 'too many indices for tensor of dimension 1', -1 with a negative dimension,
    2.5 inside torch.randint; True drew one problem."""
    with pytest.raises(ValueError, match=rf"n must be a positive int, got {n!r}"):
        arith(n, 2)


def test_arith_takes_numpy_ints():
    x, y = arith(np.int64(3), np.int64(2))
    assert x.shape == y.shape == (3, 3 * 2 + 2)


@pytest.mark.parametrize(
    ("kw", "name"),
    [({"length": "3"}, "length"), ({"n_train": 2.5}, "n_train"), ({"n_valid": True}, "n_valid")],
)
def test_make_task_names_a_size_that_is_no_int(kw, name):
    """A str length failed comparing ('<' not supported); n_train=2.5 was refused by the generators as
    'n', naming no argument of make_task."""
    args = {"length": 4, "n_train": 2, "n_valid": 2, **kw}
    with pytest.raises(ValueError, match=rf"{name} must be an int >= 1, got {kw[name]!r}"):
        make_task("plus1", **args)


def _problems(x):
    return {tuple(row.tolist()) for row in x}


def test_arith_validation_problems_are_not_training_problems():
    """Validation was drawn with seed + 1 independently of training: at digits=1 (100 problems)
    19 of 40 validation problems were training problems, inflating validation scores."""
    t = make_task("arith", length=1, n_train=80, n_valid=40, digits=1)
    q = 2 * 1 + 2
    assert not _problems(t.train[0][:, :q]) & _problems(t.valid[0][:, :q])
    assert len(t.valid[0]) == 40
    assert t.train[0].equal(arith(80, 1, seed=0)[0])  # the training data is unchanged


def test_arith_refuses_a_validation_set_only_when_no_unseen_problem_is_left():
    """Room for n_valid distinct problems was asked (80 training problems and n_valid=50 at digits=1
    were refused), though validation problems may repeat: one unseen problem is enough."""
    with pytest.raises(
        ValueError, match=r"digits=1 has 100 sequences and the 2000 training sequences take all of them"
    ):
        make_task("arith", length=1, n_train=2000, n_valid=1, digits=1)
    t = make_task("arith", length=1, n_train=80, n_valid=50, digits=1)
    assert len(t.valid[0]) == 50 and not _problems(t.train[0][:, :4]) & _problems(t.valid[0][:, :4])


def _rows(x, y=None):
    return {r.tobytes() for r in (x if y is None else x[y == 1]).numpy()}


@pytest.mark.parametrize(
    ("name", "kw"),
    [("plus1", {"length": 5, "n_train": 32, "n_valid": 16}),
     ("copy", {"length": 3, "n_train": 16, "n_valid": 8, "n_symbols": 2, "n_copy": 5})],
)  # fmt: skip
def test_plus1_and_copy_validation_sequences_are_not_training_sequences(name, kw):
    """Validation was drawn with seed + 1 independently of training: all 5 plus1 validation
    sequences containing a 1 (31 possible at length 5) and 4 of 8 copy ones (32 possible) were
    training sequences."""
    t = make_task(name, **kw)
    assert len(t.valid[0]) == len(t.valid[1]) == kw["n_valid"]
    train = copy_memory(16, 3, n_symbols=2, n_copy=5) if name == "copy" else plus_one(32, 5)
    assert t.train[0].equal(train[0])  # the training data is unchanged
    if name == "plus1":  # its one negative, all zeros, stays: the labels are those of the seed + 1 draw
        assert not _rows(t.train[0], t.train[1]) & _rows(t.valid[0], t.valid[1])
        assert t.valid[1].equal((t.valid[0].sum((1, 2)) > 0).long())
        assert sorted(t.valid[1].tolist()) == sorted(plus_one(16, 5, seed=1)[1].tolist())
    else:
        assert not _rows(t.train[0]) & _rows(t.valid[0])
        assert t.valid[1][:, -5:].equal(t.valid[0][:, :5])


def test_plus1_and_copy_keep_their_data_where_nothing_collides():
    t = make_task("plus1", length=64, n_train=20, n_valid=10, seed=3)
    assert t.train[0].equal(plus_one(20, 64, seed=3)[0]) and t.valid[0].equal(plus_one(10, 64, seed=4)[0])
    t = make_task("copy", length=5, n_train=20, n_valid=10, seed=3)
    assert t.train[0].equal(copy_memory(20, 5, seed=3)[0]) and t.valid[0].equal(copy_memory(10, 5, seed=4)[0])


@pytest.mark.parametrize(
    ("name", "kw", "msg"),
    [("plus1", {"length": 2, "n_train": 64, "n_valid": 2},
      r"\(sequences containing a 1\) has 3 sequences and the 64 training sequences take all of them"),
     ("copy", {"length": 3, "n_train": 64, "n_valid": 32, "n_symbols": 2, "n_copy": 4},
      r"n_symbols=2, n_copy=4 has 16 sequences and the 64 training sequences take all of them")],
)  # fmt: skip
def test_plus1_and_copy_refuse_a_validation_set_the_space_cannot_hold(name, kw, msg):
    with pytest.raises(ValueError, match=msg):
        make_task(name, **kw)


@pytest.mark.parametrize(
    ("name", "kw"),
    [("plus1", {"length": 3, "n_train": 5, "n_valid": 8}),
     ("copy", {"length": 3, "n_train": 10, "n_valid": 32, "n_symbols": 2, "n_copy": 4})],
)  # fmt: skip
def test_plus1_and_copy_need_only_one_unseen_sequence(name, kw):
    """Room for n_valid unseen sequences was asked (plus1: 5 training sequences + n_valid=8 > the 7
    containing a 1, with the all-zeros ones counted too), though validation sequences may repeat."""
    t = make_task(name, **kw)
    assert len(t.valid[0]) == kw["n_valid"]
    if name == "plus1":
        assert not _rows(t.train[0], t.train[1]) & _rows(t.valid[0], t.valid[1])
    else:
        assert not _rows(t.train[0]) & _rows(t.valid[0])


def test_plus1_gives_up_on_unseen_sequences_too_rare_to_draw(monkeypatch):
    """plus1's sequences are not equally likely: the redraws are bounded, and then refused clearly."""
    monkeypatch.setattr(memory, "_MAX_REDRAWS", 0)
    with pytest.raises(ValueError, match=r"length=4 \(sequences containing a 1\): only 6 of n_valid=8 "):
        make_task("plus1", length=4, n_train=16, n_valid=8)
