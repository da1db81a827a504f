"""Regularizers of recurrent networks: masks, model-level modules and the per-call mask plan.

Model-level modules (used around the recurrent layers):

* :class:`LockedDropout` — *variational* (locked) dropout of a sequence: one Bernoulli mask
  per sequence, shared by every time step (Gal & Ghahramani 2016, "A Theoretically Grounded
  Application of Dropout in Recurrent Neural Networks"; Merity et al. 2017, AWD-LSTM).
* :class:`EmbeddingDropout` — drops whole rows of an embedding matrix, i.e. every
  occurrence of a word in the batch (Gal & Ghahramani 2016; Merity et al. 2017).

Layer options of every :class:`rnnkit.layers.RecurrentStack` (``rnnkit.LSTM(...,
locked_dropout=, recurrent_dropout=, weight_drop=, zoneout=)``) are implemented through
:func:`sample_plan`, which draws every mask of one forward call up front, in a fixed order,
from torch's RNG (so ``torch.manual_seed`` reproduces a run and every implementation of
the layer consumes the RNG identically):

    for each layer k, for each direction d:
        "weight_drop"  one mask per parameter whose name starts with ``weight_hh`` (shape of W)
        "recurrent"    (B, S_0)      one mask per sequence on h_{t-1} before W_hh
        "zoneout"      (T, B, S_i)   one per state component i with p_i > 0 (new every step)
    then, between layer k and k+1:
        "locked"       (B, D * S_0)  one mask per sequence on the next layer's input

Per-sequence masks are drawn in the caller's batch order; for a ``PackedSequence`` with
``sorted_indices`` their rows are then permuted to the packed (sorted) order, so a mask row
belongs to a *sequence*, not to a position in the packed batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _checks
from ._nn_compat import reference
from .kernels import rng
from .options import ProbOption, check_prob, zoneout_probs  # noqa: F401 - regularizers.check_prob/zoneout_probs

KINDS = ("weight_drop", "recurrent", "zoneout", "locked", "embedding")


def sample_mask(kind: str, shape: Sequence[int], p: float, like: Tensor) -> Tensor:
    """Draw one mask, with ``like``'s dtype and device, reproducibly under ``torch.manual_seed``.

    On the CPU (eager) from the counter-based generator of :mod:`rnnkit.kernels.rng`, seeded
    from torch's generator; elsewhere (CUDA, under torch.compile, inside
    ``vmap(randomness="different")``: one mask per sample) from ``torch.rand``.

    For dropout kinds the mask holds ``0`` (dropped, probability ``p``) or ``1 / (1 - p)``
    (kept, inverted-dropout scaling); for ``"zoneout"`` it holds ``1`` (the unit keeps its
    previous value, probability ``p``) or ``0``. Every regularizer of rnnkit draws its masks
    here, so tests can record or replace them by monkeypatching this one function.
    """
    if kind not in KINDS:
        raise ValueError(f"mask kind must be one of {KINDS}, got {kind!r}")
    # on every branch: torch.rand's returned NaN masks (p = NaN) or rescaled ones (p < 0) silently
    check_prob("p", p)
    # inside vmap(randomness="different") torch.rand draws one mask per sample; the counter-based
    # generator takes one seed, a Python int, which vmap cannot give per sample
    vmapped = _vmap_per_sample_randomness()
    if like.device.type == "cpu" and not torch.compiler.is_compiling() and not vmapped:
        # a counter-based generator seeded from torch's: ~25x faster than torch.rand on the CPU
        if kind == "zoneout":
            return rng.bernoulli_mask(shape, p, 1.0, 0.0, like.dtype)
        return rng.bernoulli_mask(shape, p, 0.0, 1 / (1 - p) if p < 1 else 0.0, like.dtype)
    # ``rand < p`` rather than ``bernoulli_``: the same distribution, ~2x faster on the CPU
    # (zoneout draws two masks per call; at small sizes that was a third of the step)
    # The comparisons run in place (a float 1/0 where true/false): no bool tensor and no
    # conversion pass, ~25% of a mask's cost at the medium shape; under vmap out of place (it
    # has no batching rule for the in-place ones).
    u = torch.rand(tuple(shape), device=like.device)
    if kind == "zoneout":
        return (u < p).to(like.dtype) if vmapped else u.lt_(p).to(like.dtype)
    if p >= 1:  # everything dropped; avoid 0 * inf
        return torch.zeros_like(u, dtype=like.dtype)
    return (u >= p).to(like.dtype) / (1 - p) if vmapped else u.ge_(p).to(like.dtype).div_(1 - p)


def _vmap_per_sample_randomness() -> bool:
    """Inside ``torch.func.vmap(..., randomness="different")`` (at any level of nested transforms)."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    if active is None or not active():
        return False
    from torch._functorch import pyfunctorch

    levels = pyfunctorch.retrieve_all_functorch_interpreters()
    return any(getattr(i, "randomness", lambda: None)() == "different" for i in levels)


def packed_rows(batch_sizes: Tensor | Sequence[int]) -> Tensor:
    """Index of the sequence (sorted position) of every row of packed data.

    Row ``r`` of step ``t`` belongs to sorted sequence ``r - offset_t``; indexing a per-sequence
    mask ``(B, F)`` with the result gives the mask of every packed row, ``(sum(batch_sizes), F)``.
    """
    bs = torch.as_tensor(batch_sizes, dtype=torch.long, device="cpu")
    starts = torch.cumsum(bs, 0) - bs
    return torch.arange(int(bs.sum())) - torch.repeat_interleave(starts, bs)


def apply_sequence_mask(x: Tensor, mask: Tensor, batch_sizes: Tensor | None, batch_first: bool) -> Tensor:
    """``x ⊙ mask`` with one mask row per sequence, broadcast over time.

    ``mask`` is ``(B, F)`` in the rows' order (sorted order for packed data); ``x`` is dense
    ``(T, B, F)`` / ``(B, T, F)`` (``batch_first``), time-major flat ``(T * B, F)``, or packed
    data ``(sum(batch_sizes), F)``.
    """
    if batch_sizes is not None:
        return x * mask[packed_rows(batch_sizes).to(mask.device)]
    if x.dim() == 3:
        return x * (mask.unsqueeze(1) if batch_first else mask.unsqueeze(0))
    B = mask.shape[0]
    return (x.view(-1, B, x.shape[-1]) * mask).view(x.shape)


class LockedDropout(nn.Module):
    """Locked (variational) dropout: one mask per sequence, shared over the time axis.

    ``y[t, b, f] = x[t, b, f] · m[b, f] / (1 - p)`` with ``m[b, f] ~ Bernoulli(1 - p)`` drawn
    once per forward call (Gal & Ghahramani 2016; Merity et al. 2017). Input: ``(T, B, F)``,
    ``(B, T, F)`` with ``batch_first``, ``(T, F)`` unbatched, or a ``PackedSequence`` (one
    mask per sequence broadcast over its steps; the row belongs to the sequence). Identity in
    ``eval()`` or when ``p == 0``.
    """

    p = ProbOption()  # checked on every assignment

    def __init__(self, p: float = 0.5, batch_first: bool = False) -> None:
        super().__init__()
        self.p = p
        if not isinstance(batch_first, bool):  # as the layers' (a true string swaps time and batch)
            raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
        self.batch_first = batch_first

    def forward(self, x: Tensor | PackedSequence) -> Tensor | PackedSequence:
        if not isinstance(x, (Tensor, PackedSequence)):
            raise ValueError(f"LockedDropout expects a tensor or a PackedSequence, got {type(x).__name__}")
        _check_floating("LockedDropout", "input", x.data if isinstance(x, PackedSequence) else x)
        if isinstance(x, Tensor) and x.dim() not in (2, 3):  # in eval() too: not only in training
            raise ValueError(
                f"LockedDropout expects (T, B, F), (B, T, F) or (T, F) input, got {tuple(x.shape)}"
            )
        if isinstance(x, PackedSequence) and x.data.dim() != 2:  # (N,) got an (N, N) mask, silently
            raise ValueError(
                f"LockedDropout expects PackedSequence data (sum(batch_sizes), F), got {tuple(x.data.shape)}"
            )
        if not self.training or self.p == 0:
            return x
        if isinstance(x, PackedSequence):
            data, bs, sorted_idx, unsorted_idx = x
            mask = sample_mask("locked", (int(bs[0]), data.shape[-1]), self.p, data)
            if sorted_idx is not None:
                mask = mask.index_select(0, sorted_idx)
            return PackedSequence(apply_sequence_mask(data, mask, bs, False), bs, sorted_idx, unsorted_idx)
        if x.dim() == 2:  # unbatched (T, F): one mask over features
            return x * sample_mask("locked", (1, x.shape[-1]), self.p, x)
        B = x.shape[0] if self.batch_first else x.shape[1]
        return apply_sequence_mask(
            x, sample_mask("locked", (B, x.shape[-1]), self.p, x), None, self.batch_first
        )

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", batch_first=True" if self.batch_first else "")


def _check_floating(who: str, what: str, t: Tensor) -> None:
    """A ``ValueError`` unless ``t`` is floating-point (or complex): an integer tensor got a mask of
    its own dtype, ``1 / (1 - p)`` truncated (1 for p < 0.5), so its kept units went unscaled."""
    if not (t.is_floating_point() or t.is_complex()):
        raise ValueError(
            f"{who} expects a floating-point {what} (kept units are scaled by 1 / (1 - p)), got {t.dtype}"
        )


def embedding_dropout(weight: Tensor, p: float, training: bool = True) -> Tensor:
    """``weight ⊙ m / (1 - p)`` with one ``m[v] ~ Bernoulli(1 - p)`` per row (word) ``v``.

    ``weight`` is ``(V, E)``; returns the dropped matrix ``(V, E)`` (e.g. to share with a tied
    decoder). Identity when not ``training`` or ``p == 0``.
    """
    # checked in every mode: a 1-D weight (V,) times the mask (V, 1) broadcast to (V, V), silently
    p = check_prob("p", p)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"embedding_dropout expects a (V, E) weight, got {got}")
    _check_floating("embedding_dropout", "weight", weight)
    if not isinstance(training, bool):  # a true string ('False') dropped, None did not, silently
        raise TypeError(f"embedding_dropout: training should be of type bool, got: {type(training).__name__}")
    if not training or p == 0:
        return weight
    return weight * sample_mask("embedding", (weight.shape[0], 1), p, weight)


class EmbeddingDropout(nn.Module):
    """Embedding dropout: drops whole rows of an embedding matrix (Merity et al. 2017, §4.3).

    Every occurrence of a dropped word in the batch gets a zero vector, the kept rows are
    scaled by ``1 / (1 - p)``; a new mask is drawn at every forward call. Call it with the
    embedding (an ``nn.Embedding``, whose ``padding_idx``, ``max_norm`` ... are honoured, or a
    ``(V, E)`` weight tensor) and the indices ``(*)``; returns ``(*, E)``. With ``max_norm`` the
    looked-up rows of the embedding's weight are renormalized in place first, as ``nn.Embedding``
    does, and then dropped: the output is ``emb(input)`` with each word's vector kept and scaled by
    ``1 / (1 - p)``, or zeroed::

        emb, edrop = nn.Embedding(V, E), rnnkit.EmbeddingDropout(0.1)
        x = edrop(emb, tokens)           # instead of emb(tokens)
    """

    p = ProbOption()  # checked on every assignment

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        self.p = p

    def forward(self, embedding: nn.Embedding | Tensor, input: Tensor) -> Tensor:
        if isinstance(embedding, nn.Embedding):
            e = embedding
            if e.max_norm is not None:
                # as nn.Embedding: the looked-up rows of its own weight renormalized in place, then
                # dropped; renormalizing the dropped copy undid the 1 / (1 - p) of the kept rows
                # (their norm capped at max_norm: half the evaluation's output at p = 0.5)
                with torch.no_grad():
                    torch.embedding_renorm_(e.weight, input.contiguous(), e.max_norm, e.norm_type)
            w = embedding_dropout(e.weight, self.p, self.training)
            return F.embedding(input, w, e.padding_idx, None, e.norm_type, e.scale_grad_by_freq, e.sparse)
        if not isinstance(embedding, Tensor) or embedding.dim() != 2:
            got = tuple(embedding.shape) if isinstance(embedding, Tensor) else type(embedding).__name__
            raise ValueError(f"EmbeddingDropout expects an nn.Embedding or a (V, E) weight, got {got}")
        _check_floating("EmbeddingDropout", "weight", embedding)
        return F.embedding(input, embedding_dropout(embedding, self.p, self.training))

    def extra_repr(self) -> str:
        return f"p={self.p}"


# -- layer options: the masks of one forward call -------------------------------------------
@dataclass
class CallPlan:
    """Everything the regularizers of one ``RecurrentStack`` forward call need.

    ``params[k][d]`` are layer ``k`` direction ``d``'s tensors with dropped ``weight_hh*``;
    ``recurrent[k][d]`` is ``(B, S_0)`` or ``None``; ``zoneout[k][d]`` is a tuple of keep
    masks ``(T, B, S_i)`` (or ``None`` per component) in training, ``None`` in evaluation;
    ``locked[k]`` the mask ``(B, D * S_0)`` between layers ``k`` and ``k + 1``. All masks are in
    the rows' order (sorted for packed input).
    """

    params: list[list[dict[str, Tensor]]]
    recurrent: list[list[Tensor | None]] = field(default_factory=list)
    zoneout: list[list[tuple[Tensor | None, ...] | None]] = field(default_factory=list)
    locked: list[Tensor | None] = field(default_factory=list)


def drop_weights(params: dict[str, Tensor], p: float, like: Tensor) -> dict[str, Tensor]:
    """DropConnect (Wan et al. 2013) on every ``weight_hh*`` entry, one mask per tensor."""
    if p == 0:
        return params
    return {
        n: (w * sample_mask("weight_drop", w.shape, p, like) if n.startswith("weight_hh") else w)
        for n, w in params.items()
    }


def sample_plan(module, batch: int, steps: int, like: Tensor, sorted_idx: Tensor | None) -> CallPlan:
    """Draw every mask of one forward call of ``module`` (a ``RecurrentStack``), in the
    documented order; ``steps`` is the number of time steps, ``batch`` of sequences."""
    L, D, train = module.num_layers, module.num_directions, module.training

    def rows(m: Tensor, dim: int = 0) -> Tensor:  # caller's order -> packed (sorted) order
        return m if sorted_idx is None else m.index_select(dim, sorted_idx)

    plan = CallPlan(params=[[module.layer_params(k, d) for d in range(D)] for k in range(L)])
    for k, cell in enumerate(module.cells):
        sizes = cell.state_sizes()
        zp = module.zoneout_probs[k]
        plan.recurrent.append([])
        plan.zoneout.append([])
        for d in range(D):
            if train:
                plan.params[k][d] = drop_weights(plan.params[k][d], module.weight_drop, like)
            rec = None
            if train and module.recurrent_dropout:
                rec = rows(sample_mask("recurrent", (batch, sizes[0]), module.recurrent_dropout, like))
            plan.recurrent[k].append(rec)
            zo = None
            if train and any(zp):
                zo = tuple(
                    rows(sample_mask("zoneout", (steps, batch, s), p, like), 1) if p else None
                    for s, p in zip(sizes, zp)
                )
            plan.zoneout[k].append(zo)
        if k < L - 1:
            lp = module.locked_dropout
            m = rows(sample_mask("locked", (batch, D * sizes[0]), lp, like)) if train and lp else None
            plan.locked.append(m)
    return plan


@dataclass(frozen=True)
class StepMasks:
    """The per-sequence masks of a single-step cell, held by the caller across steps.

    Drawn by ``StepCell.sample_masks(batch_size)`` at the start of each sequence and passed
    to every step as ``cell(x_t, state, masks=masks)``: ``recurrent`` is ``(B, S_0)`` (on
    ``h_{t-1}``), ``weights`` maps each ``weight_hh*`` name to a mask of its shape.
    """

    batch_size: int
    recurrent: Tensor | None = None
    weights: dict[str, Tensor] = field(default_factory=dict)


def check_step_masks(cell: Any, masks: object, p: dict[str, Tensor], batch: int) -> None:
    """A :class:`~rnnkit.modules.StepCell` in training with recurrent dropout or weight-drop: that
    ``masks`` is a :class:`StepMasks` the cell sampled (:meth:`sample_masks`) for this ``batch``;
    ``p`` are the cell's parameters by name. Another cell's masks (other sizes or dtype) failed
    inside the step, or broadcast silently: a recurrent mask (B, 1) over (B, H)."""
    if not isinstance(masks, StepMasks):
        _checks.fail(
            f"{type(cell).__name__} with recurrent_dropout={cell.recurrent_dropout} / weight_drop="
            f"{cell.weight_drop} needs per-sequence masks in training: call masks = "
            f"cell.sample_masks({batch}) once per sequence and pass masks=masks at every step "
            f"(got masks={type(masks).__name__})"
        )
    if masks.batch_size != batch:
        _checks.fail(f"masks were sampled for batch_size={masks.batch_size}, but the input has {batch}")
    if (cell.recurrent_dropout > 0) != (masks.recurrent is not None) or (cell.weight_drop > 0) != bool(
        masks.weights
    ):
        pairs = [
            (cell.recurrent_dropout > 0, cell.weight_drop > 0),  # what the cell expects
            (masks.recurrent is not None, bool(masks.weights)),  # what the masks hold
        ]
        expect, hold = (
            f"{'a' if r else 'no'} recurrent mask and {'' if w else 'no '}weight-drop masks" for r, w in pairs
        )
        _checks.fail(
            f"masks were not sampled by this cell: its recurrent_dropout={cell.recurrent_dropout} / "
            f"weight_drop={cell.weight_drop} expect {expect}, got {hold}"
        )
    shapes = {n: tuple(w.shape) for n, w in p.items() if cell.weight_drop and n.startswith("weight_hh")}
    if set(masks.weights) != set(shapes):
        got = sorted(masks.weights)
        _checks.fail(f"masks were not sampled by this cell: expected masks of {sorted(shapes)}, got {got}")
    given = [(f"{n} mask", masks.weights[n], shapes[n]) for n in shapes]
    if masks.recurrent is not None:
        given.append(("recurrent mask", masks.recurrent, (batch, cell.cell.state_sizes()[0])))
    for what, m, shape in given:
        if tuple(m.shape) != shape:
            got = tuple(m.shape)
            _checks.fail(
                f"masks were not sampled by this cell: expected a {what} of shape {shape}, got {got}"
            )
        _checks.check_like(m, reference(cell, "weight_ih"), what)
