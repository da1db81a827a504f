"""The tagging task's CoNLL-U reader as a library."""

from __future__ import annotations

from rnnkit.tasks.tag import read_conllu


def _tok(i, form, upos, xpos="_"):
    return "\t".join([str(i), form, form.lower(), upos, xpos, "_", "0", "root", "_", "_"])


def test_conllu_lines_end_at_newline_only(tmp_path):
    """str.splitlines also breaks at U+2028, U+0085, form feed, a lone CR, ...: a FORM holding one (web
    text does) split its token line in two and the file was refused as malformed."""
    lines = [
        "# text = Hi there",
        _tok(1, "Hi", "INTJ", "UH"),
        _tok(2, "a\u2028b\x85c\x0cd\re", "X", "FW"),
        "",
        "# sent_id = 2",
        "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_",
        _tok(1, "Do", "AUX", "VBP"),
        _tok(2, "n't", "PART", "RB"),
        "2.1\tghost\t_\t_\t_\t_\t_\t_\t_\t_",
        _tok(3, "10 000", "NUM", "CD"),  # a FORM may hold a space
    ]  # and no blank line after the last sentence
    p = tmp_path / "a.conllu"
    p.write_bytes("\r\n".join(lines).encode("utf-8"))
    assert read_conllu(p, "xpos") == [
        [("Hi", "UH"), ("a\u2028b\x85c\x0cd\re", "FW")],
        [("Do", "VBP"), ("n't", "RB"), ("10 000", "CD")],
    ]
