"""Synthetic long-range memory benchmarks as datasets, with the model and metric of each.

* ``adding`` -- Hochreiter & Schmidhuber (1997): two channels (values ``U(0,1)``,
  markers); regress the sum of the two marked values. Predicting 1 scores MSE 1/6.
* ``copy`` -- copy memory (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016's form):
  read ``n_copy`` symbols, wait ``lag`` steps, reproduce them after a delimiter. A
  memoryless model reaches ``n_copy * ln(n_symbols) / L`` nats per step.
* ``plus1`` -- does a Bernoulli(p) sequence contain a 1? (balanced ``p``); chance 0.5.
* ``arith`` -- multi-digit addition read and answered one character at a time
  (Jozefowicz, Zaremba & Sutskever 2015, "Arith"): input ``"0123+4567="`` then the answer
  ``"04690"``; the model is trained as a language model on the answer characters and
  scored by exact match of its greedy (free-running) answer.

The first three generators are :mod:`rnnkit.datasets.synthetic`'s; every generator is
deterministic in ``seed`` (its own ``torch.Generator``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit._checks import is_int
from rnnkit.baselines import reads_ahead, step_kwargs
from rnnkit.datasets import synthetic
from rnnkit.tasks._common import SequenceNet, accuracy, check_batch_size, keeps_mode

__all__ = [
    "MemoryTask",
    "TASKS",
    "make_task",
    "arith",
    "arith_split",
    "ARITH_MAX_DIGITS",
    "ARITH_VOCAB",
    "arith_greedy",
    "memory_model",
]

ARITH_VOCAB = "0123456789+="  # ids 0..11


def _copy_memory(n: int, lag: int, n_symbols: int, n_copy: int, seed: int) -> tuple[Tensor, Tensor]:
    return synthetic.copy_memory(n, lag, n_symbols=n_symbols, n_copy=n_copy, seed=seed)


def _plus_one(n: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    return synthetic.plus_one(n, length, seed=seed)  # balanced p; default dtype


def _copy_keys(x: Tensor, n_copy: int) -> list[bytes]:
    """One key per copy sequence of ``x`` ``(n, L)``: its ``n_copy`` symbols (the rest is fixed)."""
    return [r.tobytes() for r in x[:, :n_copy].numpy()]


def _plus_one_keys(x: Tensor) -> list[bytes]:
    """One key per +1 sequence of ``x`` ``(n, length, 1)``: its 0/1 steps packed 8 to a byte."""
    return [r.tobytes() for r in np.packbits(x.reshape(len(x), -1).numpy() > 0, axis=1)]


def _no_unseen_left(name: str, space: int, n_train: int, lower: str = "n_train") -> ValueError:
    """The error of a validation draw that needs an unseen input when the training inputs take all
    ``space`` of them (the redraws would never end). One unseen input is enough: validation inputs
    are drawn independently and may repeat among themselves, so asking room for ``n_valid`` of them
    refused sizes that draw fine."""
    return ValueError(
        f"{name} has {space} sequences and the {n_train} training sequences take all of them: none "
        f"is left for an unseen validation sequence; lower {lower}, or make the task larger"
    )


#: Redraw rounds (``max(n_valid, 1024)`` sequences each) before an unseen-validation draw gives up.
_MAX_REDRAWS = 1000


def _unseen_valid(
    draw: Callable[[int, int], tuple[Tensor, Tensor]],
    keys: Callable[[Tensor], list[bytes]],
    train: tuple[Tensor, Tensor],
    n_valid: int,
    seed: int,
    space: tuple[int, str],
    exempt: int | None = None,
    sizes: str = "n_train or n_valid",
) -> tuple[Tensor, Tensor]:
    """``n_valid`` examples of ``draw(n, seed)`` whose inputs are no training input: an independent
    validation draw repeated training sequences in a small space, inflating its scores. The ``seed``
    draw comes first (unchanged where none collide); colliding examples are replaced from draws
    with ``seed + 1``, ``seed + 2``, ... ``keys`` gives one key per input row; ``space`` is the
    count and the name of the possible inputs, for errors. Examples labelled ``exempt`` are kept
    as drawn and never drawn as replacements (plus1's negative is one sequence, all zeros: held
    out, validation would lose its negatives; kept, the label counts are the draw's)."""

    def held(x: Tensor, y: Tensor) -> Tensor:  # (n,) True where the input must be unseen
        return torch.ones(len(x), dtype=torch.bool) if exempt is None else y != exempt

    seen = {k for k, h in zip(keys(train[0]), held(*train).tolist()) if h}
    # every input that must be unseen is a training one: a draw could only collide, or (plus1,
    # anyplus1) keep exempt examples alone, a validation set of one label
    if n_valid and len(seen) >= space[0]:
        raise _no_unseen_left(space[1], space[0], len(train[0]), lower=sizes.split(" or ")[0])
    xs, ys, got = [], [], 0
    for k in range(_MAX_REDRAWS + 1):
        x, y = draw(n_valid if k == 0 else max(n_valid, 1024), seed + k)
        new = torch.tensor([key not in seen for key in keys(x)], dtype=torch.bool)
        keep = new | ~held(x, y) if k == 0 else new & held(x, y)  # replacements: of colliding kinds
        xs.append(x[keep])
        ys.append(y[keep])
        got += int(keep.sum())
        if got >= n_valid:
            return torch.cat(xs)[:n_valid], torch.cat(ys)[:n_valid]
    # plus1's sequences are not equally likely: the unseen ones may be too rare to draw
    raise ValueError(
        f"{space[1]}: only {got} of n_valid={n_valid} validation sequences found after {_MAX_REDRAWS} "
        f"redraws (the {len(seen)} distinct training sequences leave too little probability to "
        f"the unseen ones); lower {sizes}, or raise the length"
    )


def _adding(n: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    return synthetic.adding(n, length, seed=seed)


#: The most digits per ``arith`` operand: they are drawn as int64, and 10**19 is past its range.
ARITH_MAX_DIGITS = 18


def arith(n: int, digits: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Addition of two random ``digits``-digit numbers as character sequences.

    Returns ``(inputs (n, L), targets (n, L))`` of ids into :data:`ARITH_VOCAB`, with
    ``L = 2 digits + 2 + digits + 1 - 1``: the input is question + answer without its
    last character, the target the next character on answer positions and ``-100``
    elsewhere (question characters are not predicted).
    """
    _check_arith(n, "n", digits)
    return _arith_ids(_arith_problems(n, digits, seed), digits)


def arith_split(
    n_train: int, n_valid: int, digits: int, seed: int = 0
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(train, valid)`` as :func:`arith`'s (seeds ``seed`` and ``seed + 1``) with no validation
    problem among the training ones: a validation set drawn independently repeated training
    problems (many at ``digits=1``, 100 problems in all), inflating its scores."""
    _check_arith(n_train, "n_train", digits)
    _check_arith(n_valid, "n_valid", digits)
    train = _arith_problems(n_train, digits, seed)
    seen, space = set(train), 10 ** (2 * digits)
    if len(seen) >= space:  # the draws below would never end
        raise _no_unseen_left(f"arith with digits={digits}", space, n_train)
    valid = _arith_problems(n_valid, digits, seed + 1, exclude=seen)
    return _arith_ids(train, digits), _arith_ids(valid, digits)


def _check_arith(n: int, name: str, digits: int) -> None:
    # ints only: True passed as 1 digit and failed formatting ('0Trued'), 2.0 and n=2.5 in randint,
    # n=0 in indexing an empty id tensor ("too many indices")
    if not is_int(n) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    if not is_int(digits) or not 1 <= digits <= ARITH_MAX_DIGITS:  # (beyond: "Overflow when unpacking")
        raise ValueError(f"digits must be in [1, {ARITH_MAX_DIGITS}] (int64 operands), got {digits!r}")


def _arith_problems(
    n: int, digits: int, seed: int, exclude: set[tuple[int, int]] | None = None
) -> list[tuple[int, int]]:
    """``n`` operand pairs drawn with ``seed``'s generator, redrawing those in ``exclude`` (the
    first ``n`` pairs are the same draws as without it: no seed's data changes where none collide)."""
    g, hi, out = synthetic.generator(seed), 10**digits, []
    while len(out) < n:
        a, b = torch.randint(0, hi, (n,), generator=g), torch.randint(0, hi, (n,), generator=g)
        out += [p for p in zip(a.tolist(), b.tolist()) if not exclude or p not in exclude]
    return out[:n]


def _arith_ids(problems: list[tuple[int, int]], digits: int) -> tuple[Tensor, Tensor]:
    """``(inputs, targets)`` of :func:`arith` for the operand pairs ``problems``."""
    seqs = [f"{x:0{digits}d}+{y:0{digits}d}={x + y:0{digits + 1}d}" for x, y in problems]
    ids = torch.tensor([[ARITH_VOCAB.index(c) for c in s] for s in seqs], dtype=torch.long)
    q = 2 * digits + 2  # question length, the answer starts there
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[:, : q - 1] = -100
    return x, y


@torch.no_grad()
def arith_greedy(model: nn.Module, x: Tensor, y: Tensor, digits: int) -> Tensor:
    """Free-running answers: feed the question, then the model's own argmax characters.
    Returns ``(n, digits + 1)`` predicted answer ids."""
    q = 2 * digits + 2
    logits, state = model(x[:, :q])
    tok, outs = logits[:, -1].argmax(-1), []
    for i in range(digits + 1):
        outs.append(tok)
        if i < digits:
            logits, state = model(tok[:, None], state, **step_kwargs(model, q + i))  # its time index
            tok = logits[:, -1].argmax(-1)
    return torch.stack(outs, 1)


@dataclass
class MemoryTask:
    """A generated benchmark: train/valid tensors, the model's input/output, loss and metric."""

    name: str
    train: tuple[Tensor, Tensor]
    valid: tuple[Tensor, Tensor]
    params: dict[str, Any]
    baseline: dict[str, float]


TASKS = ("adding", "copy", "plus1", "arith")


def make_task(
    name: str,
    *,
    length: int,
    n_train: int,
    n_valid: int,
    seed: int = 0,
    n_symbols: int = 8,
    n_copy: int = 10,
    digits: int = 3,
) -> MemoryTask:
    """Build task ``name`` (one of :data:`TASKS`); ``length`` is the sequence length (the
    lag for ``copy``; unused by ``arith``, whose length follows ``digits``)."""
    for k, v in (("length", length), ("n_train", n_train), ("n_valid", n_valid)):
        if not is_int(v) or v < 1:  # (a str failed comparing; a float was named n by the generators)
            raise ValueError(f"{k} must be an int >= 1, got {v!r}")
    if name == "adding":
        if length < 2:
            raise ValueError(f"adding needs length >= 2, got {length}")
        tr, va = _adding(n_train, length, seed), _adding(n_valid, length, seed + 1)
        return MemoryTask(name, tr, va, {"length": length}, {"mse_predict_1": 1 / 6})
    if name == "copy":
        tr = _copy_memory(n_train, length, n_symbols, n_copy, seed)
        va = _unseen_valid(
            lambda n, s: _copy_memory(n, length, n_symbols, n_copy, s),
            lambda x: _copy_keys(x, n_copy),
            tr, n_valid, seed + 1, (n_symbols**n_copy, f"copy with n_symbols={n_symbols}, n_copy={n_copy}"),
        )  # fmt: skip
        L = length + 2 * n_copy
        base = {
            "memoryless_nats_per_step": n_copy * math.log(n_symbols) / L,
            "chance_accuracy": 1 / n_symbols,
        }
        return MemoryTask(name, tr, va, {"lag": length, "n_symbols": n_symbols, "n_copy": n_copy}, base)
    if name == "plus1":
        tr = _plus_one(n_train, length, seed)
        draw = lambda n, s: _plus_one(n, length, s)  # noqa: E731
        space = (2**length - 1, f"plus1 with length={length} (sequences containing a 1)")  # 0s: exempt
        va = _unseen_valid(draw, _plus_one_keys, tr, n_valid, seed + 1, space, exempt=0)
        return MemoryTask(name, tr, va, {"length": length}, {"chance_accuracy": 0.5})
    if name == "arith":
        tr, va = arith_split(n_train, n_valid, digits, seed)
        return MemoryTask(name, tr, va, {"digits": digits}, {"chance_digit_accuracy": 0.1})
    raise ValueError(f"unknown memory task {name!r}; choose one of {', '.join(TASKS)}")


def memory_model(task: str, arch: dict[str, Any], params: dict[str, Any]) -> SequenceNet:
    """The network for ``task``: features or tokens in, the task's head out."""
    if task == "adding":
        return SequenceNet(arch, 1, input_size=2, many_to_one=True)
    if task == "plus1":
        return SequenceNet(arch, 2, input_size=1, many_to_one=True)
    if task == "copy":
        v = params["n_symbols"] + 2
        return SequenceNet(arch, v, vocab_size=v)
    if task == "arith":
        net = SequenceNet(arch, len(ARITH_VOCAB), vocab_size=len(ARITH_VOCAB))
        if reads_ahead(net.encoder):  # its input holds the answer, one step ahead of the targets
            raise ValueError(
                "arith is a language model over the answer characters and needs a unidirectional "
                "encoder (a backward direction would read the characters it predicts), got bidirectional=True"
            )
        return net
    raise ValueError(f"unknown memory task {task!r}")


def loss_fn(task: str):
    """``loss(output, target)``: MSE for ``adding``, token cross-entropy otherwise."""
    if task == "adding":
        return lambda out, y: F.mse_loss(out.squeeze(-1), y)
    from rnnkit.train import lm_loss

    return lm_loss


@torch.no_grad()
@keeps_mode
def evaluate(task: MemoryTask, model: nn.Module, batch_size: int = 256) -> dict[str, float]:
    """The task's metric on the validation set (in eval mode; the model's modes restored after)."""
    check_batch_size(batch_size)
    model.eval()
    dev = next(model.parameters()).device
    x, y = task.valid[0].to(dev), task.valid[1].to(dev)
    outs = [model(x[i : i + batch_size])[0] for i in range(0, len(x), batch_size)]
    out = torch.cat(outs)
    if task.name == "adding":
        return {"valid_mse": float(F.mse_loss(out.squeeze(-1), y))}
    if task.name == "plus1":
        return {"valid_accuracy": accuracy(out.argmax(-1), y)}
    if task.name == "copy":
        k = task.params["n_copy"]
        return {"valid_recall_accuracy": accuracy(out[:, -k:].argmax(-1), y[:, -k:])}
    d = task.params["digits"]
    pred = torch.cat([arith_greedy(model, x[i : i + batch_size], y, d) for i in range(0, len(x), batch_size)])
    answer = y[:, -(d + 1) :]
    exact = int((pred == answer).all(1).sum()) / len(answer) if len(answer) else float("nan")  # as accuracy()
    return {
        "valid_exact_match": exact,
        "valid_digit_accuracy": accuracy(pred, answer),
    }
