"""Many-to-many tagging (part of speech) with a bidirectional encoder over CoNLL-U data.

Every token gets the tag of the output at its position of a bidirectional LSTM (or any
``--arch``; convolutions become centred, non-causal). Words are lower-cased; words seen
fewer than ``min_count`` times in training map to ``<unk>``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from rnnkit.tasks._common import SequenceNet, keeps_mode, padded_batches, utf8_error_offset
from rnnkit.tasks.classify import _split

__all__ = [
    "read_conllu",
    "TagData",
    "load_tagging",
    "tagger",
    "loader",
    "step_fn",
    "evaluate",
    "predict_tags",
]

PAD, UNK = 0, 1
# a CoNLL-U ID: a word (1, 2, ...), a multi-word token range (1-2) or an empty node (0.1, 1.1)
_ID = re.compile(r"[1-9]\d*|[1-9]\d*-[1-9]\d*|\d+\.[1-9]\d*")


def read_conllu(path: str | Path, column: str = "upos") -> list[list[tuple[str, str]]]:
    """Sentences of ``(form, tag)`` from a CoNLL-U file (``upos`` or ``xpos`` column).

    Comment lines, multi-word token ranges (``1-2``) and empty nodes (``1.1``) are skipped.
    Raises ``ValueError`` naming the line of a malformed token line (not 10 fields, or an ID
    that is none of an integer, a range or a decimal)."""
    col = {"upos": 3, "xpos": 4}.get(column)
    if col is None:
        raise ValueError(f"tag column must be 'upos' or 'xpos', got {column!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"CoNLL-U file {str(p)!r} does not exist")
    sents: list[list[tuple[str, str]]] = []
    cur: list[tuple[str, str]] = []
    try:
        # a BOM is not text; lines end at "\n" only (read_text also breaks at a lone "\r",
        # splitlines at U+2028, U+0085, ...: characters a FORM may hold)
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not valid UTF-8 (byte {utf8_error_offset(p.read_bytes())})") from None
    if "\r" in text and "\n" not in text:  # old Mac line ends (read by the previous release)
        raise ValueError(f"{p}: its lines end at a lone CR; CoNLL-U's end at LF: convert it (tr '\\r' '\\n')")
    lines = text.split("\n")
    for i, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line.strip():
            if cur:
                sents.append(cur)
                cur = []
            continue
        if line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 10:
            raise ValueError(f"{p}:{i}: a CoNLL-U token line has 10 tab-separated fields, got {len(parts)}")
        if not _ID.fullmatch(parts[0]):  # a shifted or garbled line would be read as a token
            raise ValueError(
                f"{p}:{i}: the ID field is an integer, a range 1-2 or a decimal 1.1, got {parts[0]!r}"
            )
        if "-" in parts[0] or "." in parts[0]:
            continue
        cur.append((parts[1], parts[col]))
    if cur:
        sents.append(cur)
    if len(sents) < 2:
        raise ValueError(f"{p}: need at least 2 sentences, found {len(sents)}")
    return sents


@dataclass
class TagData:
    train: list[tuple[Tensor, Tensor]]
    valid: list[tuple[Tensor, Tensor]]
    words: list[str]
    tags: list[str]


def load_tagging(
    path: str | Path,
    *,
    valid: str | Path | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    min_count: int = 1,
    column: str = "upos",
) -> TagData:
    """Encode a CoNLL-U file (and an optional separate validation file) as id tensors; without
    ``valid``, a ``valid_fraction`` in (0, 1) of the sentences, drawn by ``seed``, validates."""
    sents = read_conllu(path, column)
    if valid is not None:
        tr_s, va_s = sents, read_conllu(valid, column)
    else:
        tr, va = _split(len(sents), valid_fraction, seed)  # (checks valid_fraction in (0, 1))
        tr_s, va_s = [sents[i] for i in tr.tolist()], [sents[i] for i in va.tolist()]
    counts = Counter(w.lower() for s in tr_s for w, _ in s)
    words = ["<pad>", "<unk>", *sorted(w for w, c in counts.items() if c >= min_count)]
    tags = sorted({t for s in tr_s for _, t in s})
    if tags == ["_"]:  # CoNLL-U's "unspecified": a tagger of that one tag would be 100 % right
        raise ValueError(
            f"{path}: no {column} tags, every token's is '_' (unannotated); "
            f"use the other column (--tag-column {'xpos' if column == 'upos' else 'upos'})"
        )
    wid, tid = {w: i for i, w in enumerate(words)}, {t: i for i, t in enumerate(tags)}
    if not any(t in tid for s in va_s for _, t in s):
        # every target would be -1 (ignored by the loss): the run trained a whole epoch and then
        # failed at its validation, "evaluate() got no target", naming neither the data nor the tags
        unseen = sorted({t for s in va_s for _, t in s})
        raise ValueError(
            f"{valid if valid is not None else path}: no validation token has a {column} tag seen in "
            f"training (validation tags {unseen[:10]}, training tags {tags[:10]}): nothing to validate on"
        )

    def enc(s: list[tuple[str, str]]) -> tuple[Tensor, Tensor]:
        # a tag unseen in training can never be predicted: it counts as an error (-1 never matches)
        return (
            torch.tensor([wid.get(w.lower(), UNK) for w, _ in s]),
            torch.tensor([tid.get(t, -1) for _, t in s]),
        )

    return TagData([enc(s) for s in tr_s], [enc(s) for s in va_s], words, tags)


def tagger(arch: dict[str, Any], n_words: int, n_tags: int, embedding_dim: int = 64) -> SequenceNet:
    """Embedding -> bidirectional encoder -> per-token tag logits ``(B, T, n_tags)``."""
    return SequenceNet(
        arch, n_tags, vocab_size=n_words, embedding_dim=embedding_dim, bidirectional=True, padding_idx=PAD
    )


def loader(
    items: list, batch_size: int, *, shuffle: bool, seed: int = 0, num_replicas: int = 1, rank: int = 0
) -> DataLoader:
    """Padded batches bucketed by length; ``num_replicas > 1``: this rank's share (DDP)."""
    from rnnkit.data import BucketBatchSampler, PadCollate

    lengths = [len(x) for x, _ in items]
    sampler = BucketBatchSampler(
        lengths, batch_size, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank
    )
    return DataLoader(
        items, batch_sampler=sampler, collate_fn=PadCollate(batch_first=True, padding_value=PAD)
    )


def step_fn(model: nn.Module, batch: Any, state: Any) -> tuple[Tensor, None]:
    """Token cross-entropy; padding (-100) and unseen tags (-1) are ignored."""
    from rnnkit.train import lm_loss

    logits, _ = model(batch.inputs, None, lengths=batch.lengths)
    return lm_loss(logits, batch.targets.masked_fill(batch.targets < 0, -100)), None


@torch.no_grad()
@keeps_mode
def evaluate(model: nn.Module, data: DataLoader) -> dict[str, float]:
    """``{"valid_accuracy"}``: the fraction of tokens tagged right (an unseen tag, -1, is an
    error; -100 padding is left out); NaN without any token, as :func:`accuracy` says."""
    from rnnkit.train import move_to

    model.eval()
    dev = next(model.parameters()).device
    right = total = 0
    for b in data:
        b = move_to(b, dev)
        logits, _ = model(b.inputs, None, lengths=b.lengths)
        keep = b.targets != -100
        right += int((logits.argmax(-1)[keep] == b.targets[keep]).sum())
        total += int(keep.sum())
    # no target, no accuracy: NaN, not a score of 0.0 (the other tasks' accuracy() says so too)
    return {"valid_accuracy": right / total if total else float("nan")}


@torch.no_grad()
@keeps_mode
def predict_tags(
    model: nn.Module, sentences: list[list[str]], words: list[str], tags: list[str], batch_size: int = 256
) -> list[list[str]]:
    """The tag of every token of each sentence (tokens as in CoNLL-U's FORM column; words
    are lower-cased as in training, unknown ones become ``<unk>``)."""
    wid = {w: i for i, w in enumerate(words)}
    for i, s in enumerate(sentences, 1):
        if isinstance(s, str):  # its characters were tagged as words, silently: one tag per character
            raise ValueError(f"input {i}: a sentence is a list of tokens, got a str {s!r}: split it")
        if not s:
            raise ValueError(f"input {i}: an empty sentence")
    ids = [torch.tensor([wid.get(w.lower(), UNK) for w in s]) for s in sentences]
    model.eval()
    dev = next(model.parameters()).device
    out: list[list[str]] = []
    for x, lengths in padded_batches(ids, batch_size, dev, PAD):
        best = model(x, None, lengths=lengths)[0].argmax(-1).tolist()
        out += [[tags[k] for k in row[:n]] for row, n in zip(best, lengths.tolist(), strict=True)]
    return out
