"""The complete example of docs/train.md runs as written."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "train.md"


def test_complete_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    example = blocks[0]
    assert "Trainer(" in example and "resume=True" in example
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(DOC), "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert "valid ppl" in out
    assert (tmp_path / "runs/lm/checkpoints/latest").is_file()
    assert (tmp_path / "runs/lm/loss.png").is_file()
    # run again: resumes from the final checkpoint instead of starting over
    exec(compile(example, str(DOC), "exec"), {"__name__": "docs_example"})
