"""Polyphonic music: Bach chorales of music21's corpus as 88-key piano rolls.

The task of Boulanger-Lewandowski et al. (2012), used by Greff et al. (2017, "LSTM: A
Search Space Odyssey") and Chung et al. (2014): predict frame ``t`` of a binary piano roll
``x (T, 88)`` (MIDI pitches 21..108) from frames ``< t``, each key an independent
Bernoulli. The score is the frame-level negative log-likelihood in nats::

    NLL = -(1 / #frames) Σ_t Σ_k [x_tk log p_tk + (1 - x_tk) log(1 - p_tk)]

The first frame is predicted from an all-zero frame, so every frame is scored.

Data: every chorale that ``music21.corpus.chorales.Iterator()`` yields (371 harmonizations
in music21 10), sampled every ``quantum`` quarter notes (default 1.0, the quarter-note grid
of the JSB Chorales data set) at the frame's start. The train/valid/test split is by
chorale and fixed: a permutation of the sorted corpus names under a fixed seed, 60/20/20.
The rolls are cached in ``data_dir`` (``.npz``) after the first parse (~30 s).

music21 is an optional extra: ``pip install 'rnnkit[music]'``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.train.evaluate import kept_modes

LOW, KEYS = 21, 88  # A0 .. C8
SPLIT_SEED = 1234
SPLITS = ("train", "valid", "test")


def notes_to_roll(notes: Iterable[tuple[float, float, int]], quantum: float = 1.0,
                  length: float | None = None) -> np.ndarray:  # fmt: skip
    """Piano roll ``(T, 88)`` (``uint8``) of ``(onset, duration, midi)`` notes, times in quarter
    notes. Frame ``t`` has key ``midi - 21`` on when the note sounds at time ``t * quantum``
    (``onset <= t q < onset + duration``). ``T = ceil(length / quantum)``, ``length``
    defaulting to the end of the last note.
    """
    if quantum <= 0:
        raise ValueError(f"quantum must be positive (quarter notes), got {quantum}")
    notes = list(notes)
    end = max((o + d for o, d, _ in notes), default=0.0) if length is None else length
    T = int(np.ceil(end / quantum - 1e-9))
    roll = np.zeros((T, KEYS), dtype=np.uint8)
    eps = 1e-6 * quantum  # a note ending exactly on a frame does not sound in it
    for onset, dur, midi in notes:
        if not LOW <= midi < LOW + KEYS:
            raise ValueError(f"MIDI pitch must be in [{LOW}, {LOW + KEYS - 1}] (88 keys), got {midi}")
        first = int(np.ceil((onset - eps) / quantum))
        last = int(np.ceil((onset + dur - eps) / quantum))  # exclusive
        roll[max(first, 0) : min(last, T), midi - LOW] = 1
    return roll


def _require_music21():
    try:
        import music21
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the greff and chung studies need music21 for the Bach chorales: "
            "pip install 'rnnkit[music]'  (or: pip install music21)"
        ) from e
    return music21


def score_notes(score) -> list[tuple[float, float, int]]:
    """``(onset, duration, midi)`` of every note of a music21 score (chords expanded, tied
    notes merged), times in quarter notes."""
    _require_music21()
    notes = []
    for n in score.stripTies().flatten().notes:
        pitches = getattr(n, "pitches", None) or (n.pitch,)
        for p in pitches:
            notes.append((float(n.offset), float(n.quarterLength), int(p.midi)))
    return notes


def score_to_roll(score, quantum: float = 1.0) -> np.ndarray:
    """Piano roll ``(T, 88)`` of a music21 score (see :func:`notes_to_roll`)."""
    return notes_to_roll(score_notes(score), quantum, float(score.highestTime))


def default_data_dir() -> Path:
    return Path(os.environ.get("RNNKIT_DATA", Path.home() / ".cache" / "rnnkit"))


def split_names(names: list[str]) -> dict[str, list[str]]:
    """The fixed 60/20/20 split by chorale of ``names`` (order-independent)."""
    names = sorted(names)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(names))
    n_tr, n_va = int(0.6 * len(names)), int(0.2 * len(names))
    idx = {"train": perm[:n_tr], "valid": perm[n_tr : n_tr + n_va], "test": perm[n_tr + n_va :]}
    return {k: [names[i] for i in sorted(v)] for k, v in idx.items()}


def save_rolls(path: Path, rolls: dict[str, list[np.ndarray]]) -> None:
    """Write ``{split: [roll (T_i, 88)]}`` as one ``.npz`` (atomically)."""
    arrays = {}
    for split, rs in rolls.items():
        arrays[f"{split}_data"] = np.concatenate(rs) if rs else np.zeros((0, KEYS), np.uint8)
        arrays[f"{split}_lengths"] = np.array([len(r) for r in rs], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def load_rolls(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read what :func:`save_rolls` wrote: ``{"train"|"valid"|"test": [roll (T_i, 88)]}``."""
    with np.load(path) as z:
        out = {}
        for split in SPLITS:
            data, lengths = z[f"{split}_data"], z[f"{split}_lengths"]
            out[split] = np.split(data, np.cumsum(lengths)[:-1]) if len(lengths) else []
    return out


def chorale_rolls(
    quantum: float = 1.0, data_dir: str | os.PathLike | None = None
) -> dict[str, list[np.ndarray]]:
    """The split piano rolls of music21's Bach chorales, parsed once and cached."""
    path = Path(data_dir or default_data_dir()) / f"music21_chorales_q{quantum:g}.npz"
    if path.exists():
        return load_rolls(path)
    music21 = _require_music21()
    names = list(music21.corpus.chorales.Iterator(returnType="filename"))
    rolls: dict[str, list[np.ndarray]] = {}
    for split, members in split_names(names).items():
        rolls[split] = [score_to_roll(music21.corpus.parse(n), quantum) for n in members]
    save_rolls(path, rolls)
    return rolls


def batch_rolls(rolls: list[np.ndarray]) -> tuple[Tensor, Tensor, Tensor]:
    """Time-major ``(inputs (T, B, 88), targets (T, B, 88), mask (T, B))`` of rolls.

    ``inputs`` are the targets shifted one frame later behind an all-zero first frame;
    ``mask`` marks real (unpadded) frames.
    """
    T = max(len(r) for r in rolls)
    y = torch.zeros(T, len(rolls), KEYS)
    mask = torch.zeros(T, len(rolls))
    for j, r in enumerate(rolls):
        y[: len(r), j] = torch.from_numpy(np.asarray(r, dtype=np.float32))
        mask[: len(r), j] = 1
    x = torch.cat([torch.zeros(1, len(rolls), KEYS), y[:-1]])
    return x, y, mask


def frame_nll(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(summed NLL in nats, number of frames) of ``logits/targets (T, B, 88)`` on ``mask (T, B)``."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)
    return (bce * mask).sum(), mask.sum()


def evaluate_nll(model: torch.nn.Module, rolls: list[np.ndarray], batch_size: int = 64) -> float:
    """Mean NLL per frame (nats) of ``model(inputs (T, B, 88)) -> logits (T, B, 88)``. Each module's
    own train/eval mode is restored, also when the model raises."""
    total, frames = 0.0, 0.0
    order = sorted(range(len(rolls)), key=lambda i: len(rolls[i]))  # little padding
    with kept_modes(model), torch.no_grad():
        model.eval()
        for i in range(0, len(order), batch_size):
            x, y, m = batch_rolls([rolls[j] for j in order[i : i + batch_size]])
            s, n = frame_nll(model(x), y, m)
            total, frames = total + float(s), frames + float(n)
    return total / frames
