"""The memory benchmarks as a library: their sizes are checked before anything is drawn."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_arith_refuses_a_validation_set_the_problem_space_cannot_hold():
    with pytest.raises(ValueError, match=r"digits=1 has 100 problems; the 80 training problems take \d+"):
        make_task("arith", length=1, n_train=80, n_valid=50, digits=1)
