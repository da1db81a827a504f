"""Many-to-one sequence classification: the last valid step's output -> class logits.

Data sources (:func:`load_classification`):

* ``digits`` -- scikit-learn's 8x8 handwritten digits (1,797 images), each read row by
  row: a sequence of 8 steps of 8 pixel intensities (scaled to [0, 1]); 10 classes.
* ``anyplus1`` -- "does the sequence contain a +1?" (Bernoulli inputs, balanced labels).
* ``FILE.csv`` -- rows ``text,label`` (a header row is skipped: :func:`read_text_csv`): word or
  character tokens, variable-length sequences batched by length and run packed
  (``lengths=``), so padding never enters the recurrence.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from rnnkit.tasks._common import SequenceNet, accuracy, batches, keeps_mode, padded_batches, utf8_error_offset
from rnnkit.tasks.memory import _plus_one, _plus_one_keys, _unseen_valid

__all__ = [
    "ClassifyData",
    "load_classification",
    "read_text_csv",
    "tokenize",
    "classifier",
    "predict_texts",
]

PAD, UNK = 0, 1
_WORD = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str, tokens: str) -> list[str]:
    """``"word"``: lower-cased words and punctuation marks; ``"char"``: characters."""
    if tokens == "char":
        return list(text)
    if tokens == "word":
        return _WORD.findall(text.lower())
    raise ValueError(f"tokens must be 'word' or 'char', got {tokens!r}")


def read_text_csv(path: str | Path) -> list[tuple[str, str]]:
    """Rows ``(text, label)`` of a CSV file; raises ``ValueError`` naming the bad line.

    The first row that is not blank is a header, and skipped, when it is ``text,label`` (any case)
    or when its label is none of the data's classes: on no other row, while the other rows' labels
    (two or more) are each on two rows or more. Otherwise it is data."""
    return [(text, label) for text, label, _ in _read_rows(path)]


def _read_rows(path: str | Path) -> list[tuple[str, str, int]]:
    """:func:`read_text_csv`'s rows with the file line each ends on (for later errors)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"CSV file {str(p)!r} does not exist")
    rows: list[tuple[str, str, int]] = []
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:  # a BOM is not text
            first = True  # the header, if any, is the first row that is not blank
            headed = False  # a text,label header skipped (else one of other names: _names_columns)
            reader = csv.reader(f)
            for row in reader:
                i = reader.line_num  # the row's last line: a quoted text may span several lines
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 2:
                    raise ValueError(f"{p}:{i}: expected 2 columns text,label, got {len(row)}")
                header, first = first and [c.strip().lower() for c in row] == ["text", "label"], False
                if header:
                    headed = True
                    continue
                if not row[1].strip():  # a missing label is not a class ''
                    raise ValueError(f"{p}:{i}: empty label (expected text,label)")
                rows.append((row[0], row[1].strip(), i))
    except UnicodeDecodeError:  # (its start counts from the decoder's chunk of the file)
        raise ValueError(f"{p} is not valid UTF-8 (byte {utf8_error_offset(p.read_bytes())})") from None
    except csv.Error as e:
        raise ValueError(f"{p}: not a readable CSV file: {e}") from None
    if not headed and rows and _names_columns(rows):
        rows = rows[1:]
    if len(rows) < 2:
        raise ValueError(f"{p}: need at least 2 rows text,label, got {len(rows)}")
    return rows


def _names_columns(rows: list[tuple[str, str, int]]) -> bool:
    """Whether the first of ``rows`` is a header of other names (``review,sentiment``): its label
    is on no other row while the others' labels, two or more, each repeat. (Its label was taken
    for a class of one row, with the header's words in the vocabulary.)"""
    counts = Counter(label for _, label, _ in rows[1:])
    return rows[0][1] not in counts and len(counts) >= 2 and min(counts.values()) >= 2


@dataclass
class ClassifyData:
    """Train/valid datasets of ``(x, label)`` items and how to build the model."""

    name: str
    train: Any
    valid: Any
    classes: list[str]
    model_kwargs: dict[str, Any]
    variable_length: bool = False
    vocab: list[str] = field(default_factory=list)


def _split(n: int, valid_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = min(n - 1, max(1, round(n * valid_fraction)))
    return perm[k:], perm[:k]


def _anyplus1_split(
    n: int, length: int, valid_fraction: float, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(train, valid)`` of ``n`` +1 sequences ``(x (m, length, 1), y (m,))``: one ``seed`` draw split,
    then validation sequences that are training ones replaced by unseen ones (drawn with ``seed + 1``,
    ...): at short lengths the split's validation repeated training sequences, inflating its
    accuracy. Training, and validation where nothing collides, are the split's; the all-zero
    negative stays as drawn (as :func:`~rnnkit.tasks.memory.make_task`'s ``plus1``)."""
    x, y = _plus_one(n, length, seed)
    tr, va = _split(n, valid_fraction, seed)

    def draw(m: int, s: int) -> tuple[Tensor, Tensor]:  # the first "draw" is the split's validation part
        return (x[va], y[va]) if s == seed else _plus_one(m, length, s)

    space = (2**length - 1, f"anyplus1 with length={length} (sequences containing a 1)")
    valid = _unseen_valid(draw, _plus_one_keys, (x[tr], y[tr]), len(va), seed, space, exempt=0, sizes="n")
    return (x[tr], y[tr]), valid


def load_classification(
    data: str,
    *,
    tokens: str = "word",
    length: int = 32,
    n: int = 4000,
    valid_fraction: float = 0.2,
    seed: int = 0,
    min_count: int = 1,
) -> ClassifyData:
    """Load ``digits``, ``anyplus1`` (``n`` sequences of ``length``) or a ``text,label`` CSV."""
    if data == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ImportError("--data digits needs scikit-learn: pip install 'rnnkit[tasks]'") from None
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.get_default_dtype()) / 16.0  # (N, 8 rows, 8 columns)
        y = torch.tensor(d.target, dtype=torch.long)
        tr, va = _split(len(x), valid_fraction, seed)
        return ClassifyData(
            "digits",
            TensorDataset(x[tr], y[tr]),
            TensorDataset(x[va], y[va]),
            [str(i) for i in range(10)],
            {"input_size": 8},
        )
    if data == "anyplus1":
        if n < 2:  # (one sequence left the validation part empty: a failure after training)
            raise ValueError(f"--n: anyplus1 needs at least 2 sequences (to train and to validate), got {n}")
        train, valid = _anyplus1_split(n, length, valid_fraction, seed)
        return ClassifyData(
            "anyplus1",
            TensorDataset(*train),
            TensorDataset(*valid),
            ["no +1", "+1"],
            {"input_size": 1},
        )
    if not data.lower().endswith(".csv"):
        raise ValueError(f"--data must be digits, anyplus1 or a FILE.csv of text,label rows, got {data!r}")
    lined = _read_rows(data)
    rows = [(text, label) for text, label, _ in lined]
    toks = [tokenize(t, tokens) for t, _ in rows]
    empty = [i for i, t in enumerate(toks) if not t]
    if empty:  # the file's line: a row count missed the header, blank lines and multi-line texts
        raise ValueError(f"{data}:{lined[empty[0]][2]}: the text has no {tokens} tokens")
    classes = sorted({lab for _, lab in rows})
    if len(classes) < 2:
        raise ValueError(f"{data}: need at least 2 distinct labels, got {classes}")
    tr, va = _split(len(rows), valid_fraction, seed)
    counts = Counter(t for i in tr.tolist() for t in toks[i])
    vocab = ["<pad>", "<unk>", *sorted(w for w, c in counts.items() if c >= min_count)]
    stoi = {w: i for i, w in enumerate(vocab)}
    cid = {c: i for i, c in enumerate(classes)}
    items = [(torch.tensor([stoi.get(t, UNK) for t in ts]), cid[lab]) for ts, (_, lab) in zip(toks, rows)]
    return ClassifyData(
        Path(data).name,
        [items[i] for i in tr.tolist()],
        [items[i] for i in va.tolist()],
        classes,
        {"vocab_size": len(vocab), "padding_idx": PAD},
        True,
        vocab,
    )


def classifier(arch: dict[str, Any], n_classes: int, model_kwargs: dict[str, Any]) -> SequenceNet:
    return SequenceNet(arch, n_classes, many_to_one=True, **model_kwargs)


def loader(
    cd: ClassifyData, split: str, batch_size: int, *, shuffle: bool, seed: int = 0,
    num_replicas: int = 1, rank: int = 0,
) -> DataLoader:  # fmt: skip
    """Batches of ``split`` (``"train"`` or ``"valid"``): ``(x, y)`` tensors, or ``PaddedBatch``
    (bucketed by length); with ``num_replicas > 1`` this rank's share of every global batch of
    ``batch_size`` (DDP)."""
    from rnnkit.data import BucketBatchSampler, PadCollate

    if split not in ("train", "valid"):  # a typo ("test", "training") is not the validation set
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    ds = cd.train if split == "train" else cd.valid
    if not cd.variable_length:
        return batches(ds, batch_size, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank)
    lengths = [len(x) for x, _ in ds]
    sampler = BucketBatchSampler(
        lengths, batch_size, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank
    )
    return DataLoader(ds, batch_sampler=sampler, collate_fn=PadCollate(batch_first=True, padding_value=PAD))


def step_fn(model: nn.Module, batch: Any, state: Any) -> tuple[Tensor, None]:
    """Cross-entropy of one batch; padded batches pass their lengths (packed recurrence)."""
    lengths = getattr(batch, "lengths", None)
    logits, _ = model(batch[0], None, lengths=lengths)
    return nn.functional.cross_entropy(logits, batch[1]), None


@torch.no_grad()
@keeps_mode
def evaluate(model: nn.Module, data: DataLoader) -> dict[str, float]:
    from rnnkit.train import move_to

    model.eval()
    dev = next(model.parameters()).device
    preds, gold = [], []
    for batch in data:
        batch = move_to(batch, dev)
        logits, _ = model(batch[0], None, lengths=getattr(batch, "lengths", None))
        preds.append(logits.argmax(-1).cpu())
        gold.append(batch[1].cpu())
    return {"valid_accuracy": accuracy(torch.cat(preds), torch.cat(gold))}


@torch.no_grad()
@keeps_mode
def predict_texts(
    model: nn.Module,
    texts: list[str],
    vocab: list[str],
    tokens: str,
    classes: list[str],
    batch_size: int = 256,
) -> list[tuple[str, float]]:
    """``(label, probability)`` of each text for a model trained on a ``text,label`` CSV.

    Texts are tokenized as in training; tokens outside ``vocab`` become ``<unk>``. A ``str``
    as ``texts`` is no list of texts (each of its characters was classified as a text): an error.
    """
    if isinstance(texts, str):
        raise ValueError(f"texts must be a list of texts, got the str {texts!r}: pass [{texts!r}]")
    stoi = {w: i for i, w in enumerate(vocab)}
    ids = []
    for i, text in enumerate(texts, 1):
        ts = tokenize(text, tokens)
        if not ts:
            raise ValueError(f"input {i}: no {tokens} tokens in {text!r}")
        ids.append(torch.tensor([stoi.get(t, UNK) for t in ts]))
    model.eval()
    dev = next(model.parameters()).device
    out: list[tuple[str, float]] = []
    for x, lengths in padded_batches(ids, batch_size, dev, PAD):
        logits, _ = model(x, None, lengths=lengths)
        prob, label = logits.softmax(-1).max(-1)
        out += [(classes[k], p) for k, p in zip(label.tolist(), prob.tolist(), strict=True)]
    return out
