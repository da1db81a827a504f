"""The Arith task of Jozefowicz, Zaremba & Sutskever (2015), "An Empirical Exploration of
Recurrent Network Architectures", section 4.1.

The network reads two numbers of up to ``k`` digits with the operator and ``=`` as
characters, then predicts the answer character by character, ending with ``.``::

    "12+345=357."      "907-4321=-3414."

A test answer counts only when it is *entirely* correct (every answer character and the
end mark): the paper's accuracy. Under teacher forcing, "every answer position's argmax
equals the target" is the same event as "greedy decoding reproduces the answer" (by
induction: while greedy decoding is right, its inputs are the teacher-forced ones), so
:func:`exact_match` scores one teacher-forced pass.

``delay`` (optional, default 0) inserts a random number ``0..delay`` of blank symbols
``_`` between ``=`` and the answer, as the paper's distractors that lengthen the lag.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from rnnkit.tasks.memory import ARITH_MAX_DIGITS
from rnnkit.train.evaluate import kept_modes

VOCAB = "0123456789+-=._"
PAD = len(VOCAB)  # padding index; the embedding has len(VOCAB) + 1 rows
STOI = {c: i for i, c in enumerate(VOCAB)}
IGNORE = -100


def format_example(a: int, b: int, op: str, blanks: int = 0) -> str:
    """``format_example(12, 345, "+") == "12+345=357"`` (no end mark)."""
    if op not in "+-" or len(op) != 1:
        raise ValueError(f"op must be '+' or '-', got {op!r}")
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative, got {a} and {b}")
    answer = a + b if op == "+" else a - b
    return f"{a}{op}{b}=" + "_" * blanks + str(answer)


def _number(rng: np.random.Generator, max_digits: int) -> int:
    digits = int(rng.integers(1, max_digits + 1))  # the length is uniform, then the value
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return int(rng.integers(lo, 10**digits))


def generate(n: int, max_digits: int, rng: np.random.Generator, ops: str = "+-", delay: int = 0) -> list[str]:
    """``n`` random problems: each operand has a uniform number of digits in ``1..max_digits``."""
    if not 1 <= max_digits <= ARITH_MAX_DIGITS:  # operands are drawn as int64: 10**19 is past its range
        raise ValueError(
            f"max_digits must be in [1, {ARITH_MAX_DIGITS}] (operands are int64), got {max_digits}"
        )
    if not ops or any(o not in "+-" for o in ops):
        raise ValueError(f"ops must be a non-empty string of '+' and '-', got {ops!r}")
    out = []
    for _ in range(n):
        a, b = _number(rng, max_digits), _number(rng, max_digits)
        op = ops[int(rng.integers(len(ops)))]
        blanks = int(rng.integers(delay + 1)) if delay else 0
        out.append(format_example(a, b, op, blanks))
    return out


def encode(problems: list[str]) -> tuple[Tensor, Tensor]:
    """Time-major ``(inputs (T, B), targets (T, B))`` of problems (without the end mark).

    The full string is ``problem + "."``; ``inputs`` are its characters but the last,
    ``targets`` the next character where that character belongs to the answer (the
    characters after ``=`` and its blanks, and the end mark) and ``-100`` elsewhere.
    Shorter problems are padded with :data:`PAD` (inputs) and ``-100`` (targets).
    """
    seqs = [p + "." for p in problems]
    T = max(len(s) for s in seqs) - 1
    x = torch.full((T, len(seqs)), PAD, dtype=torch.long)
    y = torch.full((T, len(seqs)), IGNORE, dtype=torch.long)
    for j, s in enumerate(seqs):
        if "=" not in s or any(c not in STOI for c in s):
            raise ValueError(f"not an Arith problem: {s[:-1]!r}")
        ids = [STOI[c] for c in s]
        x[: len(s) - 1, j] = torch.tensor(ids[:-1])
        start = s.index("=") + 1
        while s[start] == "_":  # the blanks are not predicted: they carry no information
            start += 1
        # position t predicts character t + 1: the answer starts at character `start`
        y[start - 1 : len(s) - 1, j] = torch.tensor(ids[start:])
    return x, y


def exact_match(logits: Tensor, targets: Tensor) -> Tensor:
    """``(B,)`` bool: every scored position of an example predicted right.

    ``logits (T, B, V)``, ``targets (T, B)`` with ``-100`` at unscored positions.
    """
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits (T, B, V) and targets (T, B) disagree: {tuple(logits.shape)} vs "
                         f"{tuple(targets.shape)}")  # fmt: skip
    ok = (logits.argmax(-1) == targets) | (targets == IGNORE)
    return ok.all(0)


def decode(ids: Tensor) -> str:
    """Token ids -> characters (padding dropped)."""
    return "".join(VOCAB[i] for i in ids.tolist() if i != PAD)


def accuracy(model: torch.nn.Module, problems: list[str], batch_size: int = 500) -> float:
    """Fraction of ``problems`` whose answer ``model(inputs (T, B)) -> logits (T, B, V)``
    gets entirely right. Each module's own train/eval mode is restored, also when the model raises."""
    right = 0
    with kept_modes(model), torch.no_grad():
        model.eval()
        for i in range(0, len(problems), batch_size):
            x, y = encode(problems[i : i + batch_size])
            right += int(exact_match(model(x), y).sum())
    return right / len(problems)
