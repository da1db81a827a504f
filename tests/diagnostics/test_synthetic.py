"""Synthetic tasks: layout, labels, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rnnkit.datasets import synthetic


def test_copy_memory_layout():
    x, y = synthetic.copy_memory(50, lag=7, n_symbols=5, n_copy=3, seed=1)
    assert x.shape == y.shape == (50, 7 + 6) and x.dtype == torch.long
    syms = x[:, :3]
    assert syms.min() >= 2 and syms.max() <= 6 and len(syms.unique()) == 5
    assert torch.all(x[:, 3 + 7 - 1] == synthetic.DELIMITER)
    assert torch.all(x[:, 3 : 3 + 6] == synthetic.BLANK) and torch.all(x[:, -3:] == synthetic.BLANK)
    assert torch.equal(y[:, -3:], syms) and torch.all(y[:, :-3] == synthetic.BLANK)
    # each symbol is recalled lag + n_copy steps after it was shown
    assert (x.shape[1] - 3) - 0 == 7 + 3


def test_plus_one_labels_and_balance():
    x, y = synthetic.plus_one(4000, 20, seed=3)
    assert x.shape == (4000, 20, 1) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(y, (x.sum((1, 2)) > 0).long())
    assert abs(y.double().mean().item() - 0.5) < 0.03  # balanced p; fixed seed, deterministic
    assert synthetic.plus_one_p(20) == pytest.approx(1 - 0.5 ** (1 / 20))
    x1, _ = synthetic.plus_one(10, 5, p=1.0)
    assert torch.all(x1 == 1)
    x0, y0 = synthetic.plus_one(10, 5, p=0.0)
    assert torch.all(x0 == 0) and torch.all(y0 == 0)


def test_adding_problem():
    x, y = synthetic.adding(100, 11, seed=0)
    assert x.shape == (100, 11, 2)
    m = x[..., 1]
    assert torch.all(m.sum(1) == 2)
    assert torch.all(m[:, :5].sum(1) == 1) and torch.all(m[:, 5:].sum(1) == 1)
    torch.testing.assert_close(y, (x[..., 0] * m).sum(1))
    assert torch.all((x[..., 0] >= 0) & (x[..., 0] < 1))


def test_adding_marker_ranges_are_the_documented_ones():
    """For an odd length the second marker can sit at ``length // 2``, below ``length/2``,
    which the docstring used to give as the bound. The distribution is kept (recorded
    results depend on it); the docstring now states it."""
    assert "``[0, length // 2)``" in synthetic.adding.__doc__
    assert "``[length // 2, length)``" in synthetic.adding.__doc__
    for length in (5, 6, 2):
        m = synthetic.adding(2000, length, seed=1)[0][..., 1]
        first, second = m[:, : length // 2], m[:, length // 2 :]
        assert torch.all(first.sum(1) == 1) and torch.all(second.sum(1) == 1)
        assert torch.all(first.sum(0) > 0) and torch.all(second.sum(0) > 0)  # every position occurs


@pytest.mark.parametrize(
    "fn,args",
    [
        (synthetic.copy_memory, (8, 5)),
        (synthetic.plus_one, (8, 5)),
        (synthetic.adding, (8, 6)),
    ],
)
def test_deterministic_with_seed_and_global_rng_untouched(fn, args):
    state = torch.get_rng_state()
    a, b, c = fn(*args, seed=4), fn(*args, seed=4), fn(*args, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_errors():
    with pytest.raises(ValueError, match="lag must be a positive int, got 0"):
        synthetic.copy_memory(2, 0)
    with pytest.raises(ValueError, match="p must be a probability"):
        synthetic.plus_one(2, 3, p=1.5)
    with pytest.raises(ValueError, match="length must be >= 2"):
        synthetic.adding(2, 1)
    with pytest.raises(ValueError, match="n must be a positive int"):
        synthetic.plus_one(2.5, 3)


@pytest.mark.parametrize(
    "fn, args",
    [
        (synthetic.copy_memory, (8, 5)),
        (synthetic.plus_one, (8, 5)),
        (synthetic.adding, (8, 6)),
    ],
)
def test_numpy_ints_are_taken(fn, args):
    """Sizes given as numpy integers (``np.int64`` from an array) were refused as "not a positive
    int", where the layers take them; the data are those of the Python ints."""
    got, want = fn(*map(np.int64, args), seed=3), fn(*args, seed=3)
    assert all(torch.equal(u, v) for u, v in zip(got, want))
    assert synthetic.plus_one_p(np.int64(5)) == synthetic.plus_one_p(5)
    with pytest.raises(ValueError, match="n must be a positive int, got True"):
        fn(True, *args[1:])


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float32"])
def test_adding_refuses_a_dtype_that_is_not_floating(dtype):
    """dtype=torch.int64 truncated every U(0, 1) value and every target to 0, silently; a string
    failed in .to() as an invalid device string."""
    with pytest.raises(TypeError, match=rf"dtype must be a floating-point torch.dtype .*, got {dtype!r}$"):
        synthetic.adding(2, 4, dtype=dtype)
    x, y = synthetic.adding(2, 4, dtype=torch.float32)
    assert x.dtype == y.dtype == torch.float32


@pytest.mark.parametrize("p", [True, "0.5"])
def test_plus_one_refuses_a_p_that_is_no_number(p):
    """True was taken as p=1 (every input a 1); a str failed comparing, naming no argument."""
    with pytest.raises(ValueError, match=rf"p must be a probability in \[0, 1\], got {p!r}"):
        synthetic.plus_one(2, 3, p=p)
