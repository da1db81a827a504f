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
