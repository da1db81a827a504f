"""Evaluation of a language model over a whole token tensor."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.data.batching import bptt_batches
from rnnkit.train.state import check_carried_rows, count_tokens, lm_loss, move_to, output_and_state

__all__ = ["evaluate_lm", "evaluate_batches", "kept_modes"]


@contextlib.contextmanager
def kept_modes(model: nn.Module) -> Iterator[None]:
    """On exit, every module of ``model`` is back in the train/eval mode it had on entry (its own
    flag: ``model.train(was)`` would set every submodule, a frozen batch norm too); a generator
    (``charlm.sample``) holds it across its yields."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    data: Tensor | Sequence[int],
    batch_size: int = 1,
    seq_len: int = 70,
    *,
    batch_first: bool = False,
    stateful: bool = True,
    device: torch.device | str | None = None,
) -> float:
    """Mean cross-entropy in nats/token of ``model`` over all of ``data`` (N,).

    The data is cut as by :func:`rnnkit.data.bptt_batches` and the state carried
    through the windows (``model(inputs, state) -> (logits, state)``; with
    ``stateful=False``, ``model(inputs) -> logits``); logits are ``(T, B, V)`` or
    ``(B, T, V)``. Every token of the ``batch_size`` streams is scored once, the last
    one against the wrap-around target. ``exp`` of the result is the perplexity.
    Every module's own train/eval mode is restored afterwards.
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    total, tokens, state = 0.0, 0, None
    with kept_modes(model):
        model.eval()
        for batch in bptt_batches(data, batch_size, seq_len, batch_first=batch_first):
            x, y = batch.inputs.to(device), batch.targets.to(device)
            if stateful:
                logits, state = output_and_state(model(x, state))
            else:
                logits = model(x)
            total += float(lm_loss(logits, y)) * y.numel()
            tokens += y.numel()
    return total / tokens


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    data: Iterable[Any],
    forward: Callable[[nn.Module, Any, Any], tuple[Tensor, Any]],
    *,
    carry_state: bool = True,
    device: torch.device | str | None = None,
    batch_first: bool = False,
) -> tuple[float, int]:
    """Sum of ``loss * tokens`` and the token count over ``data`` in eval mode.

    ``forward(model, batch, state) -> (mean loss, new_state)``; the state is carried
    from batch to batch when ``carry_state`` (a batch of other sequences than the one before
    it is then an error; ``batch_first``: the inputs' layout). A batch without targets
    (``count_tokens`` 0) only carries the state. Every module's own train/eval mode is restored.
    """
    total, tokens, state, rows = 0.0, 0, None, None
    with kept_modes(model):
        model.eval()
        for i, batch in enumerate(data, 1):
            batch = move_to(batch, device)
            if carry_state:  # (a batch of other rows than the state's: an error naming the carry)
                carried = rows if state is not None else None
                rows = check_carried_rows(batch, carried, batch_first, f"validation batch {i}")
            loss, state = forward(model, batch, state)
            n = count_tokens(batch)
            if n:  # without a target the mean loss is NaN (a mean over nothing), and NaN * 0 is NaN
                total, tokens = total + float(loss) * n, tokens + n
            state = state if carry_state else None
    return total, tokens
