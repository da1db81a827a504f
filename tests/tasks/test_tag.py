"""The tagging task as a library: the CoNLL-U reader, evaluation."""

from __future__ import annotations

import re

import pytest

from rnnkit.tasks.tag import load_tagging, read_conllu


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


def test_conllu_with_lone_cr_line_ends_is_refused_naming_them(tmp_path):
    """The previous release read a file whose lines end at a lone CR (universal newlines); since
    lines end at LF only, such a file was one line: a leading comment made it "need at least 2
    sentences, found 0" (its runs' --resume failing so). The error names the line ends."""
    lines = ["# sent_id = 1", _tok(1, "Hi", "INTJ"), "", "# sent_id = 2", _tok(1, "Yo", "INTJ"), ""]
    p = tmp_path / "mac.conllu"
    p.write_bytes("\r".join(lines).encode("utf-8"))
    with pytest.raises(ValueError, match=r"mac.conllu: its lines end at a lone CR; .*convert it"):
        read_conllu(p)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_load_tagging_refuses_a_valid_fraction_outside_0_1(tmp_path, fraction):
    """load_tagging clamped any valid_fraction to 1..n-1 sentences (0 gave one validation
    sentence, 1.5 all but one) where classify's loader refuses it."""
    p = tmp_path / "a.conllu"
    p.write_text("".join(f"{_tok(1, w, 'X')}\n\n" for w in "abcdef"), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"valid_fraction must be in \(0, 1\), got {fraction}"):
        load_tagging(p, valid_fraction=fraction)


def test_load_tagging_split_is_seeded_and_disjoint(tmp_path):
    p = tmp_path / "a.conllu"
    p.write_text("".join(f"{_tok(1, w, 'X')}\n\n" for w in "abcdefghij"), encoding="utf-8")
    d, again = load_tagging(p, valid_fraction=0.2, seed=3), load_tagging(p, valid_fraction=0.2, seed=3)
    assert (len(d.train), len(d.valid)) == (8, 2)
    assert [x.tolist() for x, _ in d.valid] == [x.tolist() for x, _ in again.valid]
    assert all(x.tolist() == [1] for x, _ in d.valid)  # validation words were never seen: <unk>


@pytest.mark.parametrize("bad", ["x", "", "1-", "-1", "1.", "1-2-3", "0", "1.0", "1a"])
def test_read_conllu_refuses_a_malformed_id_naming_the_line(tmp_path, bad):
    """The ID field was not checked: a shifted or garbled token line was read as a token."""
    lines = [_tok(1, "Hi", "INTJ"), "", "0.1\tghost\t_\t_\t_\t_\t_\t_\t_\t_", _tok(10, "Yo", "INTJ")]
    lines += ["1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_", _tok(bad, "no", "X")]
    p = tmp_path / "a.conllu"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"a.conllu:6: the ID field is an integer.*got '{re.escape(bad)}'"):
        read_conllu(p)
    p.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    assert read_conllu(p) == [[("Hi", "INTJ")], [("Yo", "INTJ")]]


@pytest.mark.parametrize("column", ["upos", "xpos"])
def test_load_tagging_refuses_a_column_without_annotation(tmp_path, column):
    """A column of '_' only (CoNLL-U's 'unspecified', as XPOS of many treebanks) trained a tagger
    of the single tag '_', 100 % accurate, silently (``rnnkit train tag --tag-column xpos``)."""
    p = tmp_path / "a.conllu"
    upos, xpos = ("_", "NOUN") if column == "upos" else ("NOUN", "_")
    p.write_text("".join(f"{_tok(1, w, upos, xpos)}\n\n" for w in "abcdef"), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"a.conllu.*no {column} tags.*'_'"):
        load_tagging(p, column=column)
    assert load_tagging(p, column="xpos" if column == "upos" else "upos").tags == ["NOUN"]


def test_evaluate_of_no_target_is_nan_as_accuracy_is():
    """``evaluate`` over batches without a counted target returned an accuracy of 0.0 (``right /
    max(total, 1)``), a score, where the tasks' ``accuracy`` (classify, memory) returns NaN: no
    targets, no accuracy. Both say NaN; with targets it is the fraction right (-1, a tag unseen in
    training, counts as an error)."""
    import math

    import torch

    from rnnkit.data import PadCollate
    from rnnkit.tasks._common import accuracy
    from rnnkit.tasks.tag import PAD, evaluate, tagger

    torch.manual_seed(0)
    model = tagger({"cell": "lstm", "hidden": 6, "layers": 1, "dropout": 0.0, "options": {}}, 6, 3, 4)
    collate = PadCollate(batch_first=True, padding_value=PAD)
    x = [torch.tensor([2, 3, 4]), torch.tensor([5, 2])]
    none = [collate([(x[0], torch.full((3,), -100)), (x[1], torch.full((2,), -100))])]
    assert math.isnan(evaluate(model, none)["valid_accuracy"])
    assert math.isnan(accuracy(torch.zeros(3, dtype=torch.long), torch.full((3,), -100)))
    tags = [torch.tensor([0, 1, -1]), torch.tensor([2, 0])]
    batch = collate(list(zip(x, tags, strict=True)))
    pred = model(batch.inputs, None, lengths=batch.lengths)[0].argmax(-1)
    assert evaluate(model, [batch])["valid_accuracy"] == pytest.approx(accuracy(pred, batch.targets))


@pytest.mark.parametrize("separate", [False, True])
def test_load_tagging_refuses_validation_without_a_training_tag(tmp_path, separate):
    """Validation tokens whose tags were all unseen in training are all -1, which the loss ignores: the
    run trained an epoch and then failed at validation ("evaluate() got no target"), naming neither
    the file nor the tags. It is refused when the data is loaded, naming the validation tags."""
    p, v = tmp_path / "a.conllu", tmp_path / "v.conllu"
    p.write_text(f"{_tok(1, 'a', 'X')}\n\n{_tok(1, 'b', 'Y')}\n\n", encoding="utf-8")
    v.write_text(f"{_tok(1, 'c', 'Z')}\n\n{_tok(1, 'd', 'Z')}\n\n", encoding="utf-8")
    name = "v.conllu" if separate else "a.conllu"
    with pytest.raises(ValueError, match=rf"{name}: no validation token has a upos tag seen in training"):
        load_tagging(p, valid=v if separate else None, valid_fraction=0.5)
    v.write_text(f"{_tok(1, 'c', 'Z')}\n\n{_tok(1, 'd', 'X')}\n\n", encoding="utf-8")
    d = load_tagging(p, valid=v)  # one known tag is enough: the other counts as an error
    assert [y.tolist() for _, y in d.valid] == [[-1], [0]]


def test_predict_tags_refuses_a_sentence_given_as_a_string():
    """A sentence is a list of tokens: a str was iterated character by character, so "the dog" got
    seven tags, one per character (the space too), silently."""
    import torch

    from rnnkit.tasks.tag import predict_tags, tagger

    torch.manual_seed(0)
    model = tagger({"cell": "lstm", "hidden": 4, "layers": 1, "dropout": 0.0, "options": {}}, 5, 2, 4)
    words, tags = ["<pad>", "<unk>", "the", "dog", "a"], ["D", "N"]
    with pytest.raises(ValueError, match=r"input 2: a sentence is a list of tokens, got a str 'the dog'"):
        predict_tags(model, [["a"], "the dog"], words, tags)
    assert [len(t) for t in predict_tags(model, [["a"], ["the", "dog"]], words, tags)] == [1, 2]
