"""The classification task's data as a library: CSV rows, splits, the anyplus1 generator."""

from __future__ import annotations

import pytest

from rnnkit.tasks.classify import read_text_csv


def test_header_after_blank_lines_is_skipped(tmp_path):
    """The header was recognised on the file's first line only: after a blank line it became a
    row, a text 'text' of class 'label'."""
    p = tmp_path / "a.csv"
    p.write_text("\n \ntext,label\nhi there,a\nyo,b\n", encoding="utf-8")
    assert read_text_csv(p) == [("hi there", "a"), ("yo", "b")]


def test_an_empty_label_is_an_error_naming_the_line(tmp_path):
    """A row with its label missing ('yo,') was read as a class '' of its own."""
    p = tmp_path / "a.csv"
    p.write_text("text,label\nhi there,a\nyo, \nzz,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"a.csv:3: empty label"):
        read_text_csv(p)


def test_error_line_numbers_count_the_lines_of_a_multi_line_text(tmp_path):
    """Lines were counted as rows: a quoted text over two lines put the error one line early."""
    p = tmp_path / "a.csv"
    p.write_text('text,label\n"hi\nthere",a\nyo,b\nzz,\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"a.csv:5: empty label"):
        read_text_csv(p)


def test_a_text_without_tokens_is_an_error_naming_its_line(tmp_path):
    """The error counted data rows ('row 3'): with the header, a blank line and a text over two lines
    before it, the row was on line 6, and line 3 held another, good row."""
    from rnnkit.tasks.classify import load_classification

    p = tmp_path / "a.csv"
    p.write_text('text,label\n\ngood film,a\n"bad\nfilm",b\n  ,b\nok,a\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"a.csv:6: the text has no word tokens"):
        load_classification(str(p))
    cd = load_classification(str(p), tokens="char")  # blanks are characters: the 4 rows load
    assert len(cd.train) + len(cd.valid) == 4


@pytest.mark.parametrize("split", ["test", "training", "Train"])
def test_loader_refuses_an_unknown_split(split):
    """Any split but 'train' returned the validation set without a word."""
    from rnnkit.tasks.classify import load_classification, loader

    cd = load_classification("anyplus1", length=4, n=10)
    assert len(loader(cd, "valid", 4, shuffle=False).dataset) == len(cd.valid)
    with pytest.raises(ValueError, match=rf"split must be 'train' or 'valid', got '{split}'"):
        loader(cd, split, 4, shuffle=False)


def test_anyplus1_validation_sequences_are_not_training_sequences():
    """One draw was split into train and validation: at length 4 all 4 validation sequences
    containing a 1 (15 possible) were training ones, inflating validation accuracy."""
    from rnnkit.datasets.synthetic import plus_one
    from rnnkit.tasks.classify import _split, load_classification

    cd = load_classification("anyplus1", length=4, n=40)
    (xt, yt), (xv, yv) = cd.train.tensors, cd.valid.tensors
    x, y = plus_one(40, 4)
    tr, va = _split(40, 0.2, 0)
    assert xt.equal(x[tr]) and yt.equal(y[tr])  # the training data is unchanged
    assert len(xv) == len(va) and yv.equal((xv.sum((1, 2)) > 0).long())
    rows = lambda x, y: {r.tobytes() for r in x[y == 1].numpy()}  # noqa: E731
    assert not rows(xt, yt) & rows(xv, yv)


def test_anyplus1_keeps_its_split_where_nothing_collides():
    from rnnkit.datasets.synthetic import plus_one
    from rnnkit.tasks.classify import _split, load_classification

    cd = load_classification("anyplus1", length=64, n=20, seed=3)
    x, _ = plus_one(20, 64, seed=3)
    tr, va = _split(20, 0.2, 3)
    assert cd.train.tensors[0].equal(x[tr]) and cd.valid.tensors[0].equal(x[va])


def test_anyplus1_refuses_a_validation_set_the_space_cannot_hold():
    from rnnkit.tasks.classify import load_classification

    msg = r"anyplus1 with length=2 \(sequences containing a 1\) has 3 sequences and the 16 .* lower n,"
    with pytest.raises(ValueError, match=msg):
        load_classification("anyplus1", length=2, n=20)  # training holds all three
    # n=10: training holds two of the three; one unseen sequence is enough (validation may repeat it)
    cd = load_classification("anyplus1", length=2, n=10)
    seen = {tuple(r) for r in cd.train.tensors[0].squeeze(-1).tolist()}
    assert all(tuple(r) not in seen or not any(r) for r in cd.valid.tensors[0].squeeze(-1).tolist())


def test_predict_texts_refuses_a_str_as_its_texts():
    """A str as texts was iterated into characters: "ab" gave two predictions, one per character,
    silently. It is now an error saying to wrap it; a list of texts is unchanged."""
    from rnnkit.tasks.classify import classifier, predict_texts

    arch = {"cell": "lstm", "hidden": 4, "layers": 1, "dropout": 0.0, "options": {}}
    model = classifier(arch, 2, {"vocab_size": 4, "padding_idx": 0})
    vocab = ["<pad>", "<unk>", "a", "b"]
    with pytest.raises(ValueError, match=r"texts must be a list of texts, got the str 'ab': pass \['ab'\]"):
        predict_texts(model, "ab", vocab, "char", ["x", "y"])
    assert len(predict_texts(model, ["ab"], vocab, "char", ["x", "y"])) == 1


def test_a_header_of_other_names_is_skipped(tmp_path):
    """Only a header written text,label was skipped: 'review,sentiment' became a data row, a class
    'sentiment' of one row with 'review' in the vocabulary. A first row whose label is none of the
    data's classes is the header; where every class is too rare to tell, the first row is data."""
    p = tmp_path / "a.csv"
    p.write_text("review,sentiment\ngood film,pos\nbad film,neg\nfine,pos\nawful,neg\n", encoding="utf-8")
    assert read_text_csv(p) == [("good film", "pos"), ("bad film", "neg"), ("fine", "pos"), ("awful", "neg")]
    p.write_text("hi there,a\nyo,b\nzz,c\n", encoding="utf-8")  # every label once: data
    assert [label for _, label in read_text_csv(p)] == ["a", "b", "c"]
    p.write_text("good,pos\nbad,neg\nfine,pos\nawful,neg\n", encoding="utf-8")  # its label repeats: data
    assert len(read_text_csv(p)) == 4
    p.write_text("text,label\nodd,x\nbad,neg\nfine,pos\nawful,neg\ngood,pos\n", encoding="utf-8")
    assert read_text_csv(p)[0] == ("odd", "x")  # after the text,label header, a rare class is data
