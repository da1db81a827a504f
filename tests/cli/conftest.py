"""Helpers for the command-line tests: run ``rnnkit.cli.main`` in-process, tiny data files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from rnnkit.cli import main

# Tiny models on a small shared machine: one intra-op thread is much faster than two
# threads spinning against other jobs (as in tests/train).
torch.set_num_threads(1)

TINY = ["--hidden", "8", "--max-steps", "3", "--no-progress"]


@pytest.fixture(autouse=True)
def malloc_calls(monkeypatch):
    """``rnnkit train`` tunes the process's malloc (process-wide, irreversible): in-process
    tests record the calls instead (tests/train/test_malloc.py checks the real thing)."""
    import rnnkit.train

    calls: list[tuple] = []
    monkeypatch.setattr(rnnkit.train, "tune_malloc", lambda *a: calls.append(a) or True)
    return calls


class Run:
    def __init__(self, rc: int, out: str, err: str) -> None:
        self.rc, self.out, self.err = rc, out, err


@pytest.fixture
def cli(capsys):
    """``cli(*argv) -> Run(rc, out, err)``."""

    def run(*argv: str) -> Run:
        rc = main([str(a) for a in argv])
        cap = capsys.readouterr()
        return Run(rc, cap.out, cap.err)

    return run


def assert_one_line_error(r: Run, *fragments: str) -> None:
    """Non-zero exit, exactly one stderr line ``rnnkit: error: ...`` holding ``fragments``."""
    assert r.rc != 0, r.out
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith("rnnkit: error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "Traceback" not in r.err


def results(out: Path) -> dict:
    from rnnkit.cli.rundir import read_results  # strict JSON: a NaN is null + "nonfinite"

    return read_results(out)


def assert_run_files(out: Path, *extra: str) -> None:
    for name in ("run.json", "results.json", "metrics.jsonl", "loss.png", "checkpoints/latest", *extra):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def conllu(tmp_path_factory) -> Path:
    """30 sentences DET ADJ NOUN VERB DET NOUN PUNCT, with a comment, a multi-word range and an
    empty node that the reader must skip."""
    rng = random.Random(0)
    lex = {"DET": ["the", "a"], "ADJ": ["big", "red", "old"], "NOUN": ["cat", "dog", "tree"],
           "VERB": ["sees", "likes"], "PUNCT": ["."]}  # fmt: skip
    lines = []
    for k in range(30):
        lines.append(f"# sent_id = {k}")
        if k == 0:
            lines.append("1-2\tthe big\t_\t_\t_\t_\t_\t_\t_\t_")
        for i, tag in enumerate(["DET", "ADJ", "NOUN", "VERB", "DET", "NOUN", "PUNCT"], 1):
            w = rng.choice(lex[tag])
            lines.append("\t".join([str(i), w, w, tag, "_", "_", "0", "_", "_", "_"]))
            if k == 0 and i == 3:
                lines.append("3.1\tghost\t_\tX\t_\t_\t_\t_\t_\t_")
        lines.append("")
    p = tmp_path_factory.mktemp("data") / "tiny.conllu"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "tiny.csv"
    rows = ["text,label"]
    for k in range(40):
        rows.append(f'"a great, lovely film {k}",pos' if k % 2 else f'"an awful movie, boring {k}",neg')
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def series_csv(tmp_path_factory) -> Path:
    import math

    p = tmp_path_factory.mktemp("data") / "series.csv"
    rows = ["t,value"] + [f"{t},{math.sin(t / 4) + 0.01 * t:.5f}" for t in range(120)]
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    rng = random.Random(1)
    words = "to be or not that is the question whether tis nobler in the mind".split()
    p = tmp_path_factory.mktemp("data") / "tiny.txt"
    p.write_text(
        "\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(120)), encoding="utf-8"
    )
    return p
