"""Every ```python block of README.md and docs/*.md runs as written.

A block is a complete program, run in a fresh namespace and a scratch directory under the
reader's default dtype (float32), unless the line right before its fence says otherwise:

* ``<!-- fragment: WHAT IT NEEDS -->``: it uses names the reader (or an earlier block)
  supplies, so it is not run;
* ``<!-- skip: REASON -->``: complete, but too slow for the suite (or needing what it lacks);
  the test is skipped with REASON.

So a new block is run by default, and a fragment or a slow block says so in the markdown.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from .conftest import default_dtype

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*(fragment|skip):\s*(\S.*?)\s*-->")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    kind: str  # "run", "fragment" or "skip"
    reason: str = ""

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of ``path`` with the marker on the line before each fence."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("```"):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("```"))
        if lines[i].strip() in ("```python", "```py"):
            prev = lines[i - 1].strip() if i else ""
            m = MARKER.fullmatch(prev)
            if prev.startswith("<!--") and m is None:
                raise ValueError(
                    f"{path.name}:{i}: unknown marker {prev!r} before a python block; expected "
                    "'<!-- fragment: WHAT IT NEEDS -->' or '<!-- skip: REASON -->'"
                )
            kind, reason = m.groups() if m else ("run", "")
            code = textwrap.dedent("\n".join(lines[i + 1 : end]) + "\n")  # fences in lists are indented
            blocks.append(Block(path, i + 1, code, kind, reason))
        i = end + 1
    return blocks


BLOCKS = [b for path in DOCS for b in python_blocks(path)]


def test_blocks_found():
    """The parser sees the blocks (a renamed fence or file would otherwise pass silently)."""
    assert len(BLOCKS) >= 25  # (each block once: README's sections link the docs/*.md holding theirs)
    assert sum(b.kind == "run" for b in BLOCKS) >= 12


# The AWD-style example builds an LSTM with proj_size, for which torch warns (docs/regularizers.md says so).
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_block_runs(block: Block, tmp_path, monkeypatch):
    if block.kind != "run":
        pytest.skip(f"{block.kind}: {block.reason}")
    monkeypatch.chdir(tmp_path)  # blocks may write (runs/lm, ...)
    # Leading newlines make a traceback name the block's line in the markdown file.
    code = compile("\n" * block.line + block.code, str(block.path), "exec")
    torch.manual_seed(0)
    with default_dtype(torch.float32):
        exec(code, {"__name__": "docs_snippet"})
