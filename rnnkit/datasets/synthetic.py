"""Synthetic long-range memory tasks: copy-memory, "+1 detection" and the adding problem.

Every generator is deterministic given ``seed`` (its own ``torch.Generator``; the global
RNG is untouched) and returns batch-first tensors; floating tensors have ``dtype`` (the
default dtype when ``None``).

* :func:`copy_memory` — Hochreiter & Schmidhuber (1997), in the form of Arjovsky et al.
  (2016): remember ``n_copy`` symbols over ``lag`` blank steps, reproduce them after a
  delimiter.
* :func:`plus_one` — does a sequence of Bernoulli(``p``) inputs contain a 1? A binary
  label at the end; the lone 1 may be anywhere, so the answer must be carried up to
  ``length`` steps (the lecture notes' example for gate activity).
* :func:`adding` — Hochreiter & Schmidhuber (1997), Le et al. (2015): sum the two values
  marked in a second channel, one marker in each half of the sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit._checks import is_int, is_real

__all__ = ["copy_memory", "plus_one", "plus_one_p", "adding", "BLANK", "DELIMITER"]

BLANK = 0
DELIMITER = 1  # symbols to remember are 2 .. n_symbols + 1


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` modulo 2**64, as ``manual_seed`` reads a negative seed
    (no seed that worked changes): a seed derived from the user's (``seed + 1`` of a validation
    part) overflowed at the range's end. The generated tasks' (here and :mod:`rnnkit.tasks.memory`)."""
    return torch.Generator().manual_seed(int(seed) % 2**64)


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not is_int(v) or v < 1:  # numpy's ints too (np.int64 from an array of sizes)
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def copy_memory(
    n: int, lag: int, *, n_symbols: int = 8, n_copy: int = 10, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Copy-memory sequences of length ``L = lag + 2 * n_copy``.

    Token layout (batch-first, ``int64``): ``n_copy`` random symbols from
    ``{2, ..., n_symbols + 1}``, ``lag - 1`` blanks (``0``), the delimiter (``1``), then
    ``n_copy`` blanks during which the symbols must be reproduced in order. Targets are
    blank everywhere except those last ``n_copy`` steps, which hold the symbols; each
    symbol is recalled ``lag + n_copy`` steps after it was seen.

    Returns ``(inputs (n, L), targets (n, L))`` as token ids (vocabulary ``n_symbols + 2``;
    one-hot them for a recurrent layer).
    """
    _check_positive(n=n, lag=lag, n_symbols=n_symbols, n_copy=n_copy)
    L = lag + 2 * n_copy
    syms = torch.randint(2, n_symbols + 2, (n, n_copy), generator=generator(seed))
    x = torch.full((n, L), BLANK, dtype=torch.long)
    x[:, :n_copy] = syms
    x[:, lag + n_copy - 1] = DELIMITER
    y = torch.full((n, L), BLANK, dtype=torch.long)
    y[:, -n_copy:] = syms
    return x, y


def plus_one_p(length: int) -> float:
    """The ``p`` that makes both labels equally likely: ``1 - (1 - p)^length = 1/2``."""
    _check_positive(length=length)
    return 1.0 - 0.5 ** (1.0 / length)


def plus_one(
    n: int, length: int, *, p: float | None = None, seed: int = 0, dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """ "+1 detection": inputs ``x_t ~ Bernoulli(p)`` i.i.d., label ``1`` iff some ``x_t = 1``.

    ``p`` defaults to :func:`plus_one_p` (balanced labels). Returns ``(inputs (n, length, 1)``
    floating 0/1, ``labels (n,)`` ``int64``).
    """
    _check_positive(n=n, length=length)
    p = plus_one_p(length) if p is None else p
    if not is_real(p) or not 0.0 <= p <= 1.0:  # (True drew all ones; a str failed comparing)
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    u = torch.rand(n, length, 1, generator=generator(seed), dtype=torch.float64)
    x = (u < p).to(dtype or torch.get_default_dtype())
    return x, (x.sum((1, 2)) > 0).long()


def adding(n: int, length: int, *, seed: int = 0, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """The adding problem: inputs ``(n, length, 2)``: channel 0 values ``U(0, 1)``, channel 1
    markers — exactly two ones, one uniformly in ``[0, length // 2)`` and one in
    ``[length // 2, length)`` (for an odd length the second range is one position longer:
    ``length=5`` gives positions 0-1 and 2-4). Target ``(n,)``: the sum of the two marked
    values (the constant prediction 1 has mean squared error 1/6)."""
    _check_positive(n=n, length=length)
    if length < 2:
        raise ValueError(f"length must be >= 2 (one marker per half), got {length}")
    # an integer one truncated every U(0, 1) value, and so every target, to 0, silently
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype (the values are U(0, 1)), got {dtype!r}")
    g = generator(seed)
    half = length // 2
    values = torch.rand(n, length, generator=g, dtype=torch.float64)
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, length, (n,), generator=g)
    markers = torch.zeros(n, length, dtype=torch.float64)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    dt = dtype or torch.get_default_dtype()
    x = torch.stack([values, markers], -1).to(dt)
    return x, (values[rows, first] + values[rows, second]).to(dt)
