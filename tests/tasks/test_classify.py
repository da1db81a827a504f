"""The classification task's data as a library: CSV rows, splits, the anyplus1 generator."""

from __future__ import annotations

from rnnkit.tasks.classify import read_text_csv


def test_header_after_blank_lines_is_skipped(tmp_path):
    """The header was recognised on the file's first line only: after a blank line it became a
    row, a text 'text' of class 'label'."""
    p = tmp_path / "a.csv"
    p.write_text("\n \ntext,label\nhi there,a\nyo,b\n", encoding="utf-8")
    assert read_text_csv(p) == [("hi there", "a"), ("yo", "b")]
