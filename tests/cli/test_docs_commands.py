"""The command lines the documentation shows parse as the commands they are shown under.

tests/test_docs_snippets.py runs the ```python blocks; nothing checked the ```bash blocks or the
flag tables of docs/cli.md against the parsers, so a renamed or removed flag left the docs wrong.
Parsing only: nothing is trained, no file is read.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from rnnkit.cli import _commands, build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: ``python -m X`` / ``torchrun ... -m X`` -> the ``rnnkit`` words it stands for
MODULES = {"rnnkit": [], "rnnkit.diagnostics": ["diagnose"], "rnnkit.study": ["study"]}


def _shell_lines(path: Path) -> list[str]:
    """The lines of ``path``'s ```bash/```sh blocks, comments cut."""
    lines, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside and line.strip("`").strip() in ("bash", "sh", "console")
        elif inside:
            lines.append(line.split(" #")[0].strip())
    return lines


def _rnnkit_argv(line: str) -> list[str] | None:
    """The ``rnnkit`` arguments of a shell line (after a pipe; ``python -m``, ``torchrun -m``)."""
    words = shlex.split(line.split("|")[-1])
    if words[:1] == ["rnnkit"]:
        return words[1:]
    if "-m" in words and words[0] in ("python", "torchrun"):
        i = words.index("-m")
        if words[i + 1] in MODULES:
            return MODULES[words[i + 1]] + words[i + 2 :]
    return None


COMMAND_LINES = [
    pytest.param(argv, id=f"{path.name}: {line}")
    for path in DOCS
    for line in _shell_lines(path)
    if (argv := _rnnkit_argv(line)) is not None and "--help" not in argv
]


def test_the_docs_show_command_lines():
    assert len(COMMAND_LINES) >= 25  # (the collection above would hide a change of the docs' format)


@pytest.mark.parametrize("argv", COMMAND_LINES)
def test_a_documented_command_line_parses(argv):
    args, extra = build_parser().parse_known_args(argv)
    assert not extra, f"not flags of that command: {extra}"
    assert callable(args.func)


def _table_rows(text: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first Markdown table after the line starting with ``heading``."""
    rows, seen = [], False
    for line in text[text.index(heading) :].splitlines()[1:]:
        if line.startswith("|"):
            seen = True
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif seen:
            break
    return rows[2:]  # (header and rule)


def _flags(cell: str) -> set[str]:
    """``--flag``s of a table cell; ``--[no-]x`` is ``--x`` and ``--no-x``."""
    found = set()
    for name in re.findall(r"(?<![\w-])--(\[no-\])?([a-z][a-z0-9_-]*)", cell):
        found |= {f"--{name[1]}", f"--no-{name[1]}"} if name[0] else {f"--{name[1]}"}
    return found


def _parsers() -> dict[str, argparse.ArgumentParser]:
    return _commands(build_parser())


def test_the_shared_flags_of_docs_cli_are_flags_of_every_train_task():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    flags = set().union(*(_flags(row[0]) for row in _table_rows(text, "Shared flags:")))
    assert {"--max-minutes", "--resume", "--no-progress", "--arch", "--conv-layers"} <= flags
    tasks = {name: p for name, p in _parsers().items() if name.startswith("train ")}
    assert len(tasks) == 6
    for name, parser in tasks.items():
        assert not flags - set(parser._option_string_actions), name


def test_the_task_table_of_docs_cli_names_each_tasks_own_flags():
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    parsers = _parsers()
    for row in _table_rows(text, "**Tasks**"):
        command = row[0].strip("`")
        flags = set().union(*(_flags(cell) for cell in row[1:]))
        assert not flags - set(parsers[command]._option_string_actions), command


@pytest.mark.parametrize("doc, command", [("diagnostics.md", "diagnose"), ("study.md", "study")])
def test_the_flags_of_a_command_page_are_the_commands(doc, command):
    """Every flag docs/diagnostics.md or docs/study.md names but on a line of another command
    (``rnnkit train ...``) and torchrun's ``--nproc_per_node``."""
    lines = (ROOT / "docs" / doc).read_text(encoding="utf-8").splitlines()
    flags = set().union(*(_flags(line) for line in lines if not line.startswith("rnnkit train ")))
    assert len(flags) > 5
    assert not flags - {"--nproc_per_node"} - set(_parsers()[command]._option_string_actions)
