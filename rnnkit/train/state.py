"""Model-agnostic helpers for recurrent states and batches.

A recurrent *state* is whatever a model returns next to its output: ``None``, a tensor
(RNN/GRU ``h``), a tuple ``(h, c)`` (LSTM), or any nesting of tuples/lists/dicts of
tensors. These helpers never look inside a cell; they only walk the containers.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.state import detach_state, rebuild_dict

__all__ = [
    "detach_state", "move_to", "count_tokens", "lm_loss", "is_nll_loss", "output_and_state", "IGNORE_INDEX",
]  # fmt: skip

IGNORE_INDEX = -100  # cross_entropy's default ignore_index; PadCollate pads targets with it


def move_to(obj: Any, device: torch.device | str | None) -> Any:
    """Move every tensor in a (nested) batch/state to ``device``; ``None`` = leave as is.

    ``PackedSequence`` and other objects with a ``.to`` method are moved with it.
    """
    if device is None or obj is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    # before the namedtuple branch: a PackedSequence is a namedtuple whose batch_sizes must stay
    # on the CPU, which only its own .to knows (rebuilt field by field, torch refuses it)
    if hasattr(obj, "to") and callable(obj.to) and not isinstance(obj, type):
        return obj.to(device)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(move_to(o, device) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(move_to(o, device) for o in obj)
    if isinstance(obj, dict):  # a subclass keeps its type, as in detach_state
        return rebuild_dict(obj, {k: move_to(v, device) for k, v in obj.items()})
    return obj


def count_targets(tgt: Tensor, padded: bool = False) -> int:
    """The targets of ``tgt`` a loss counts (:func:`count_tokens`' rule): integer targets
    ``>= 0``; floating ones all, or those ``!= -100`` when ``padded`` (PadCollate's padding)."""
    if not tgt.is_floating_point():
        return int((tgt >= 0).sum())
    return int((tgt != IGNORE_INDEX).sum()) if padded else tgt.numel()


def count_tokens(batch: Any) -> int:
    """Number of predicted targets in a batch: the weight of its mean loss in token-weighted
    means (logged and validation losses, DDP's per-rank weighting) and tokens/s.

    With targets (``batch[1]`` a tensor), integer targets are class indices and count those
    ``>= 0``: LM windows and padded tag sequences their real steps, per-sequence class labels
    one per sequence; ``IGNORE_INDEX`` (-100) and any other negative target are left out, as a
    class-index loss can only ignore them (the tag task's unseen tags, -1). Floating targets
    count every element, except in a padded batch (one with ``lengths``) where -100 is
    :class:`~rnnkit.data.PadCollate`'s padding (``target_padding_value``) and is not counted.
    Without targets: ``batch.lengths`` summed when present, else ``numel`` of the inputs.
    """
    lengths = getattr(batch, "lengths", None)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        # the targets first: a padded batch of per-sequence labels has one target per sequence,
        # whatever its lengths (the loss is a mean over the labels, not over the input steps)
        return count_targets(batch[1], isinstance(lengths, Tensor))
    if isinstance(lengths, Tensor):
        return int(lengths.sum())
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return first.numel() if isinstance(first, Tensor) else 1


def check_carried_rows(batch: Any, rows: int | None, batch_first: bool, where: str) -> int | None:
    """The number of sequences of ``batch`` (its inputs' batch dimension; None for packed or
    unbatched inputs); a ``ValueError`` when ``rows``, those of the batch whose state is carried
    into this one, differ: a state of other rows (a short last batch of a DataLoader) failed in
    the layer's words ("expected h_0 of shape ..."), naming neither the carry nor its remedy."""
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(first, Tensor) or first.dim() < 2:
        return None
    n = int(first.shape[0 if batch_first else 1])
    if rows is not None and n != rows:
        raise ValueError(
            f"carry_state=True hands each batch the state of the one before, but {where} has {n} "
            f"sequences after one of {rows}: give batches of one size (DataLoader(drop_last=True), "
            "bptt_batches' streams) or pass carry_state=False"
        )
    return n


def output_and_state(result: Any, who: str = "model") -> tuple[Any, Any]:
    """``result`` of a stateful call, checked to be a pair: ``(output, new_state)`` of
    ``model(inputs, state)`` (``who="model"``) or ``(loss, new_state)`` of a ``step_fn``. A model
    that returned its output alone was unpacked along the output's first dimension (the time
    steps of a window of 2: output = step 0, state = step 1, silently with a loss that
    broadcasts), or failed on "too many values to unpack", naming neither the protocol nor
    ``stateful=False``."""
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return result[0], result[1]
    if isinstance(result, Tensor):
        got = f"a tensor of shape {tuple(result.shape)}"
    elif isinstance(result, (tuple, list)):
        got = f"a {type(result).__name__} of {len(result)} items"
    else:
        got = type(result).__name__
    if who == "step_fn":
        raise TypeError(f"step_fn(model, batch, state) must return (loss, new_state), got {got}")
    raise TypeError(
        f"stateful=True calls model(inputs, state) and expects (output, new_state), got {got}: return "
        "the new state too (None when there is none), or pass stateful=False for model(inputs) -> output"
    )


def lm_loss(output: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy in nats over all non-ignored positions.

    ``output``: logits ``(..., V)``; ``targets``: class indices with shape
    ``output.shape[:-1]`` (any layout, as long as the two agree), ``-100`` ignored.
    """
    if not isinstance(output, Tensor):
        # e.g. a model that returns (output, new_state) trained with stateful=False: it failed on
        # "'tuple' object has no attribute 'shape'", naming neither the logits nor the protocol
        n = len(output) if isinstance(output, (tuple, list)) else None
        got = type(output).__name__ if n is None else f"a {type(output).__name__} of {n} item{'s' * (n != 1)}"
        raise TypeError(
            f"lm_loss expects logits (a tensor), got {got}; a model returning (output, new_state) is "
            "trained with stateful=True (the default)"
        )
    if output.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits shape {tuple(output.shape)} does not match targets shape "
            f"{tuple(targets.shape)}: expected logits (*targets.shape, V)"
        )
    return F.cross_entropy(
        output.reshape(-1, output.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def is_nll_loss(loss_fn: Any) -> bool:
    """Whether ``loss_fn`` is known to give a mean negative log-likelihood in nats, whose ``exp`` is a
    perplexity: :func:`lm_loss`, ``F.cross_entropy``, ``F.nll_loss`` (or a ``functools.partial`` of
    one with keywords), or an ``nn.CrossEntropyLoss`` or ``nn.NLLLoss``, each with the mean reduction,
    no class ``weight`` and no ``label_smoothing`` (any ``ignore_index``). Any other (MSE, a lambda)
    is not known to be one."""
    if isinstance(loss_fn, functools.partial) and not loss_fn.args:  # (positional ones: the logits)
        fn, settings = loss_fn.func, dict(loss_fn.keywords)
    elif isinstance(loss_fn, (torch.nn.CrossEntropyLoss, torch.nn.NLLLoss)):
        fn = F.nll_loss
        settings = {"reduction": loss_fn.reduction, "weight": loss_fn.weight,
                    "label_smoothing": getattr(loss_fn, "label_smoothing", 0.0)}  # fmt: skip
    else:
        fn, settings = loss_fn, {}
    if fn not in (lm_loss, F.cross_entropy, F.nll_loss):
        return False
    settings.pop("ignore_index", None)  # the targets left out: still a mean over the others
    # a sum's exp is no perplexity; a class-weighted mean, or one against smoothed targets (which
    # adds their entropy), is no likelihood of the data; other keywords (size_average): not known
    reduction, weight = settings.pop("reduction", "mean"), settings.pop("weight", None)
    smoothing = settings.pop("label_smoothing", 0.0)
    return not settings and reduction == "mean" and weight is None and smoothing == 0
