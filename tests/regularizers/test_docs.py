"""The code blocks of docs/regularizers.md run as written."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "regularizers.md"


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_doc_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 2
    torch.set_default_dtype(torch.float32)
    for code in blocks:
        exec(compile("import torch\nimport rnnkit\n" + code, str(DOC), "exec"), {})
