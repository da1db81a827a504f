"""Encoder-decoder on a generated translation task: English number words <-> digits.

``"two thousand forty one" <-> "2 0 4 1"`` for integers below ``max_number``; the train
and validation numbers are disjoint. The encoder reads the source; its output at the
last valid step is the summary ``c``, which the decoder receives at every step next to
the previous target token (Cho et al. 2014), so any ``--arch`` works on both sides.
Training unrolls the decoder with teacher forcing / scheduled sampling
(:func:`rnnkit.train.autoregressive_unroll`); evaluation decodes greedily and scores
exact match of the whole output sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from rnnkit._checks import is_int
from rnnkit.arch import build_recurrent
from rnnkit.baselines import encoder_output_size, step_kwargs
from rnnkit.tasks._common import check_batch_size, keeps_mode, padded_batches, splits_directions, summary

__all__ = [
    "number_to_words",
    "words_to_number",
    "make_pairs",
    "Seq2SeqData",
    "Seq2Seq",
    "collate",
    "greedy_decode",
    "exact_match",
    "translate",
    "source_ids",
]

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ["<pad>", "<bos>", "<eos>"]
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> list[str]:
    """``0 <= n < 10**9`` in English words (no "and", no hyphens): 341 -> three hundred forty one."""
    if not is_int(n) or not 0 <= n < 10**9:  # (True read as 1: "one"; 2.5 failed indexing the words)
        raise ValueError(f"n must be an int in [0, 10**9), got {n!r}")
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        return [_ONES[n // 100], "hundred"] + (number_to_words(n % 100) if n % 100 else [])
    for size, name in ((10**6, "million"), (1000, "thousand")):
        if n >= size:
            return number_to_words(n // size) + [name] + (number_to_words(n % size) if n % size else [])
    raise AssertionError(n)


def words_to_number(words: list[str]) -> int | None:
    """The ``n`` whose :func:`number_to_words` is ``words`` exactly, or ``None`` when ``words`` is no
    such rendering ("one hundred and five", "nineteen hundred", "one thousand zero"): a sum of the
    word values, scaled at each "hundred", "thousand" and "million", then checked by rendering it
    back (the rendering is unique, so only its own words give ``n``)."""
    value = {w: k for k, w in enumerate(_ONES)} | {w: 10 * k for k, w in enumerate(_TENS) if k >= 2}
    total = current = 0
    for w in words:
        if w in value:
            current += value[w]
        elif w == "hundred":
            current *= 100
        elif w in ("thousand", "million"):
            total, current = total + current * (1000 if w == "thousand" else 10**6), 0
        else:
            return None
    n = total + current
    return n if n < 10**9 and number_to_words(n) == list(words) else None


def make_pairs(numbers: list[int], direction: str) -> list[tuple[list[str], list[str]]]:
    """(source tokens, target tokens) for ``words2digits`` or ``digits2words``."""
    pairs = [(number_to_words(n), list(str(n))) for n in numbers]
    if direction == "words2digits":
        return pairs
    if direction == "digits2words":
        return [(d, w) for w, d in pairs]
    raise ValueError(f"direction must be 'words2digits' or 'digits2words', got {direction!r}")


@dataclass
class Seq2SeqData:
    train: list[tuple[Tensor, Tensor]]
    valid: list[tuple[Tensor, Tensor]]
    src_vocab: list[str]
    tgt_vocab: list[str]

    @classmethod
    def generate(
        cls,
        n_train: int,
        n_valid: int,
        *,
        max_number: int = 10_000,
        direction: str = "words2digits",
        seed: int = 0,
    ) -> Seq2SeqData:
        for name, v in (("n_train", n_train), ("n_valid", n_valid), ("max_number", max_number)):
            if not is_int(v):  # (True drew one pair; 2.5 failed slicing or in randperm, naming nothing)
                raise ValueError(f"{name} must be an int, got {v!r}")
        if n_train < 1 or n_valid < 1 or n_train + n_valid > max_number:
            raise ValueError(
                f"need 1 <= n_train, n_valid and n_train + n_valid <= max_number, got "
                f"{n_train}, {n_valid}, {max_number}"
            )
        if not 1 <= max_number <= 10**9:  # before anything is drawn: see below
            raise ValueError(f"max_number must be in [1, 10**9], got {max_number}")
        perm = _distinct(max_number, n_train + n_valid, seed)
        words = sorted(set(_ONES + _TENS[2:] + ["hundred", "thousand", "million"]))
        src_tokens, tgt_tokens = (words, list("0123456789"))
        if direction == "digits2words":
            src_tokens, tgt_tokens = tgt_tokens, words
        sv, tv = SPECIALS + src_tokens, SPECIALS + tgt_tokens
        si, ti = {t: i for i, t in enumerate(sv)}, {t: i for i, t in enumerate(tv)}

        def enc(nums: list[int]) -> list[tuple[Tensor, Tensor]]:
            return [
                (torch.tensor([si[t] for t in s]), torch.tensor([ti[t] for t in d] + [EOS]))
                for s, d in make_pairs(nums, direction)
            ]

        return cls(enc(perm[:n_train]), enc(perm[n_train : n_train + n_valid]), sv, tv)


# Up to here a permutation of all numbers below max_number (the data every seed drew so far);
# beyond, one would take 8 bytes a number (8 GB at 10**9), so distinct numbers are drawn instead.
_PERMUTE_MAX = 10**7


def _distinct(max_number: int, n: int, seed: int) -> list[int]:
    """``n`` distinct integers below ``max_number`` in a random order fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    if max_number <= _PERMUTE_MAX:
        return torch.randperm(max_number, generator=g)[:n].tolist()
    seen: set[int] = set()
    out: list[int] = []
    while len(out) < n:  # n <= max_number; collisions are rare while n << max_number
        for v in torch.randint(max_number, (n,), generator=g).tolist():
            if v not in seen and len(out) < n:
                seen.add(v)
                out.append(v)
    return out


def collate(items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """``(src (B, S) padded with PAD, tgt (B, T) padded with -100, src lengths (B,))``."""
    src = pad_sequence([s for s, _ in items], batch_first=True, padding_value=PAD)
    tgt = pad_sequence([t for _, t in items], batch_first=True, padding_value=-100)
    return src, tgt, torch.tensor([len(s) for s, _ in items])


def _one_direction(arch: dict[str, Any]) -> dict[str, Any]:
    """``arch`` without ``--opt bidirectional``, for the decoder: it is fed one step at a time with
    its state carried, so a backward direction was a second forward one (wasted parameters), and
    batch norm refused its ``step``. The option is the encoder's."""
    options = arch.get("options") or {}
    if "bidirectional" not in options:
        return arch
    return {**arch, "options": {k: v for k, v in options.items() if k != "bidirectional"}}


def _refuse_bidirectional_decoder(module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
    """Refuse, before anything is copied, a checkpoint whose decoder was bidirectional (its output
    layer reads twice the decoder's width): the decoder is now built with one direction."""
    w = state.get(prefix + "out.weight")
    if w is not None and w.shape[-1] == 2 * module.out.in_features and splits_directions(module.encoder):
        raise RuntimeError(
            f"this checkpoint's decoder is bidirectional (out.weight {tuple(w.shape)}, expected "
            f"{tuple(module.out.weight.shape)}): a model saved before --opt bidirectional=true applied "
            "to the encoder only; it cannot be loaded, train it again"
        )


class Seq2Seq(nn.Module):
    """Encoder (embedding -> ``arch``) -> summary ``c`` -> decoder fed ``[embed(y_{t-1}), c]``."""

    def __init__(self, arch: dict[str, Any], src_vocab: int, tgt_vocab: int, embedding_dim: int = 32) -> None:
        super().__init__()
        self.src_embed = nn.Embedding(src_vocab, embedding_dim, padding_idx=PAD)
        self.tgt_embed = nn.Embedding(tgt_vocab, embedding_dim, padding_idx=PAD)
        self.encoder = build_recurrent(arch, embedding_dim, batch_first=True)
        c = encoder_output_size(self.encoder)
        self.decoder = build_recurrent(_one_direction(arch), embedding_dim + c, batch_first=True)
        self.out = nn.Linear(encoder_output_size(self.decoder), tgt_vocab)
        self.register_load_state_dict_pre_hook(_refuse_bidirectional_decoder)

    def encode(self, src: Tensor, lengths: Tensor) -> Tensor:
        """``src`` (B, S) -> summary ``c`` (B, C)."""
        out, _ = self.encoder(self.src_embed(src), None, lengths=lengths.cpu())
        return summary(out, lengths, splits_directions(self.encoder))

    def decode_step(self, c: Tensor, y_prev: Tensor, state: Any, t: int = 0) -> tuple[Tensor, Any]:
        """``y_prev`` (B,) token ids (negative = padding), fed at the decoder's step ``t`` (the
        steps already fed: batch norm normalizes with that step's statistics) -> (logits (B, V),
        state)."""
        x = torch.cat([self.tgt_embed(y_prev.clamp(min=0)), c], -1)[:, None]
        out, state = self.decoder(x, state, **step_kwargs(self.decoder, t))
        return self.out(out[:, 0]), state

    def forward(
        self, src: Tensor, lengths: Tensor, tgt: Tensor, sampler: Any = None, step: int = 0
    ) -> Tensor:
        """Training unroll: logits ``(B, T, V)`` for targets ``tgt`` (B, T)."""
        from rnnkit.train import autoregressive_unroll

        c = self.encode(src, lengths)
        bos = torch.full_like(tgt[:, 0], BOS)
        t = iter(range(tgt.shape[1]))
        logits, _ = autoregressive_unroll(
            lambda y, st: self.decode_step(c, y, st, next(t)),
            bos,
            tgt,
            None,
            sampler=sampler,
            step=step,
            batch_first=True,
        )
        return logits


@torch.no_grad()
@keeps_mode
def greedy_decode(model: Seq2Seq, src: Tensor, lengths: Tensor, max_len: int) -> list[list[int]]:
    """Argmax decoding until EOS (or ``max_len`` tokens, ``max_len >= 0``: 0 gives empty
    outputs); returns token ids without EOS, one list per source in ``src`` (B, S)."""
    if not is_int(max_len) or max_len < 0:  # (True decoded one token, 2.0 failed in range())
        raise ValueError(f"max_len must be an int >= 0, got {max_len!r}")
    model.eval()
    c = model.encode(src, lengths)
    y, state = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device), None
    steps = []
    for t in range(max_len):
        logits, state = model.decode_step(c, y, state, t)
        y = logits.argmax(-1)
        steps.append(y)
    out = []
    # (torch.stack refuses an empty list: max_len 0 decodes nothing)
    ids = torch.stack(steps, 1) if steps else torch.empty((src.shape[0], 0), dtype=torch.long)
    for row in ids.tolist():
        out.append(row[: row.index(EOS)] if EOS in row else row)
    return out


@torch.no_grad()
def exact_match(
    model: Seq2Seq,
    items: list[tuple[Tensor, Tensor]],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> float:
    """Fraction of sources whose greedy output equals the target exactly (``items`` non-empty)."""
    if not items:  # (the fraction of nothing: was a ZeroDivisionError)
        raise ValueError("exact_match needs at least one (source, target) pair, got none")
    check_batch_size(batch_size)
    right = 0
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        src, tgt, lengths = collate(chunk)
        max_len = tgt.shape[1] + 2
        preds = greedy_decode(model, src.to(device), lengths, max_len)
        right += sum(p == t[:-1].tolist() for p, (_, t) in zip(preds, chunk, strict=True))
    return right / len(items)


@torch.no_grad()
def translate(
    model: Seq2Seq,
    sources: list[list[str]],
    src_vocab: list[str],
    tgt_vocab: list[str],
    max_len: int = 40,
    batch_size: int = 256,
) -> list[list[str]]:
    """Greedy translations of token lists; a token outside ``src_vocab`` is an error that
    names it (the model has never seen it). A ``str`` is no token list (it was split into
    characters: "three hundred" failed on the unknown token 't', "312" passed by chance): an error
    saying how to split it."""
    ids = source_ids(sources, src_vocab)
    dev = next(model.parameters()).device
    out: list[list[str]] = []
    for src, lengths in padded_batches(ids, batch_size, dev, PAD):
        out += [[tgt_vocab[k] for k in row] for row in greedy_decode(model, src, lengths, max_len)]
    return out


def source_ids(sources: list[list[str]], src_vocab: list[str]) -> list[torch.Tensor]:
    """The ids of each token list of ``sources`` (one ``(len,)`` tensor each), as
    :func:`translate` feeds them; its errors, the first input's (``input K: ...``, from 1)."""
    if isinstance(sources, str):
        raise ValueError(f"sources must be a list of token lists, got the str {sources!r}")
    si = {t: i for i, t in enumerate(src_vocab)}
    ids = []
    for i, src in enumerate(sources, 1):
        if isinstance(src, str):
            raise ValueError(
                f"input {i}: expected a list of tokens, got the str {src!r}: split it into tokens "
                f"(number words: {src!r}.split(); digits: list({src!r}))"
            )
        unknown = [t for t in src if t not in si or si[t] < len(SPECIALS)]
        if not src or unknown:
            what = f"unknown token {unknown[0]!r}" if unknown else "no tokens"
            raise ValueError(f"input {i}: {what}; the source vocabulary is {src_vocab[len(SPECIALS) :]}")
        ids.append(torch.tensor([si[t] for t in src]))
    return ids
