"""``rnnkit predict``: a trained run used on new inputs, checked against the library.

Each test trains a tiny model for a few steps, runs ``rnnkit predict`` on inputs of different
lengths (so batching, padding and lengths matter), and compares every output line with the
same model applied to each input alone, encoded the way training encoded it.
"""

from __future__ import annotations

import codecs
import io
import json
import math

import pytest
import torch

from rnnkit.cli.common import load_model_weights
from rnnkit.tasks import classify as C
from rnnkit.tasks import forecast as F
from rnnkit.tasks import seq2seq as S
from rnnkit.tasks import tag as T

from .conftest import TINY, assert_one_line_error


def _stdin(monkeypatch, lines):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))


def _run(out):
    return json.loads((out / "run.json").read_text())


def test_classify_text(cli, tmp_path, text_csv, monkeypatch):
    out = tmp_path / "c"
    assert cli("train", "classify", "--data", text_csv, "--out", out, *TINY).rc == 0
    run = _run(out)
    assert run["tokens"] == "word"
    texts = ["A great film", "boring, awful, an awful movie and words never seen", "lovely"]
    _stdin(monkeypatch, ["", *texts])  # a blank line gets an empty output line
    r = cli("predict", "--checkpoint", out)
    assert r.rc == 0, r.err
    blank, *lines = r.out.split("\n")[:-1]
    assert blank == "" and len(lines) == len(texts)
    model = C.classifier(run["model"]["arch"], 2, {k: v for k, v in run["model"].items() if k != "arch"})
    load_model_weights(out, out, model)
    model.eval()
    stoi = {w: i for i, w in enumerate(run["vocab"])}
    for line, text in zip(lines, texts, strict=True):
        ids = torch.tensor([[stoi.get(t, C.UNK) for t in C.tokenize(text, "word")]])
        with torch.no_grad():
            probs = model(ids, None)[0].softmax(-1)[0]
        label, p, echoed = line.split("\t")
        assert label == run["classes"][int(probs.argmax())]
        assert float(p) == pytest.approx(float(probs.max()), abs=1e-4)
        assert echoed == text


def test_stdin_bom_is_not_text(cli, tmp_path, text_csv, monkeypatch):
    """A file's UTF-8 BOM was stripped, standard input's was not: the first item began with U+FEFF
    (an unknown token, echoed back). Standard input decoded as UTF-8, as a pipe from Windows tools."""
    out = tmp_path / "c"
    assert cli("train", "classify", "--data", text_csv, "--out", out, *TINY).rc == 0
    outputs = []
    for bom in (b"", b"\xef\xbb\xbf"):
        raw = io.BytesIO(bom + b"A great film\nlovely\n")
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(raw, encoding="utf-8"))
        r = cli("predict", "--checkpoint", out, "--input", "-")
        assert r.rc == 0, r.err
        outputs.append(r.out)
    assert outputs[1] == outputs[0] and outputs[0].splitlines()[0].endswith("\tA great film")


def test_stdin_is_utf8_whatever_the_locale(cli, tmp_path, text_csv, monkeypatch):
    """Standard input was decoded with the locale's encoding (files: UTF-8), so a UTF-8 pipe
    under a latin-1 locale gave mojibake items; now its bytes are UTF-8, and bytes that are not
    get the error a file gets."""
    out = tmp_path / "c"
    assert cli("train", "classify", "--data", text_csv, "--out", out, *TINY).rc == 0
    raw = io.BytesIO("a café film\n".encode())
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(raw, encoding="latin-1"))
    r = cli("predict", "--checkpoint", out)
    assert r.rc == 0, r.err
    assert r.out.splitlines()[0].endswith("\ta café film")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ok\n\xff\n"), encoding="latin-1"))
    assert_one_line_error(cli("predict", "--checkpoint", out), "--input - is not valid UTF-8 (byte 3)")


def test_items_end_at_line_ends_only(cli, tmp_path, text_csv, monkeypatch):
    """Items were cut with str.splitlines, which also breaks at U+0085, U+2028, form feed and
    other characters a text may hold: one input line gave two predictions, and every later output
    line belonged to the wrong input. Items end at LF, CRLF or CR (as a file's universal newlines)."""
    out = tmp_path / "c"
    assert cli("train", "classify", "--data", text_csv, "--out", out, *TINY).rc == 0
    texts = ["a great\x85film", "lovely\u2028movie", "awful\x0cwords", "boring"]
    raw = ("\r\n".join(texts[:2]) + "\r" + "\n".join(texts[2:]) + "\n").encode()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    r = cli("predict", "--checkpoint", out)
    assert r.rc == 0, r.err
    echoed = [line.split("\t", 2)[2] for line in r.out.split("\n")[:-1]]
    assert echoed == texts
    inp = tmp_path / "in.txt"
    inp.write_bytes(raw)
    r = cli("predict", "--checkpoint", out, "--input", inp)
    assert r.rc == 0, r.err
    assert [line.split("\t", 2)[2] for line in r.out.split("\n")[:-1]] == texts


def test_tag_sentences(cli, tmp_path, conllu):
    out = tmp_path / "t"
    assert cli("train", "tag", "--data", conllu, "--out", out, *TINY).rc == 0
    run = _run(out)
    sents = ["The big dog sees a cat .", "a tree", "unseen words here"]
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(sents), encoding="utf-8")
    r = cli("predict", "--checkpoint", out, "--input", inp)
    assert r.rc == 0, r.err
    model = T.tagger(run["model"]["arch"], run["words"], len(run["tags"]), run["model"]["embedding_dim"])
    load_model_weights(out, out, model)
    model.eval()
    wid = {w: i for i, w in enumerate(run["vocab"])}
    for line, sent in zip(r.out.splitlines(), sents, strict=True):
        words = sent.split()
        ids = torch.tensor([[wid.get(w.lower(), T.UNK) for w in words]])
        with torch.no_grad():
            best = model(ids, None)[0].argmax(-1)[0].tolist()
        assert line == " ".join(f"{w}/{run['tags'][k]}" for w, k in zip(words, best, strict=True))


@pytest.mark.parametrize("direction", ["words2digits", "digits2words"])
def test_seq2seq_translates_like_greedy_decode(cli, tmp_path, monkeypatch, direction):
    out = tmp_path / "s"
    r = cli("train", "seq2seq", "--direction", direction, "--n-train", 64, "--n-valid", 16,
            "--batch-size", 16, "--out", out, *TINY)  # fmt: skip
    assert r.rc == 0, r.err
    m = _run(out)["model"]
    if direction == "words2digits":
        inputs, sources = (
            ["three hundred twelve", "Twenty-One"],
            [["three", "hundred", "twelve"], ["twenty", "one"]],
        )
    else:
        # a tab at an edge (a TSV's column) is whitespace as between words, not an unknown token
        inputs, sources = ["312", "2 1", "45\t"], [list("312"), list("21"), list("45")]
    _stdin(monkeypatch, inputs)
    r = cli("predict", "--checkpoint", out)
    assert r.rc == 0, r.err
    model = S.Seq2Seq(m["arch"], len(m["src_vocab"]), len(m["tgt_vocab"]), m["embedding_dim"])
    load_model_weights(out, out, model)
    si = {t: i for i, t in enumerate(m["src_vocab"])}
    joiner = "" if direction == "words2digits" else " "
    for line, src in zip(r.out.splitlines(), sources, strict=True):
        ids = torch.tensor([[si[t] for t in src]])
        (row,) = S.greedy_decode(model, ids, torch.tensor([len(src)]), 40)
        assert line == joiner.join(m["tgt_vocab"][k] for k in row)
    _stdin(monkeypatch, ["three hundred banana"] if direction == "words2digits" else ["3x"])
    assert_one_line_error(cli("predict", "--checkpoint", out), "input line 1: unknown token")
    if direction == "words2digits":  # a number beyond --max-number, or no number, was garbage too
        _stdin(monkeypatch, ["nine thousand nine hundred ninety nine", "five million"])
        assert_one_line_error(
            cli("predict", "--checkpoint", out),
            "input line 2: 'five million' (5000000) is outside the numbers the model was trained on, "
            "[0, 10000)",
        )
        _stdin(monkeypatch, ["seven", "one hundred and five"])  # 'and': not in the vocabulary
        assert_one_line_error(cli("predict", "--checkpoint", out), "input line 2: unknown token 'and'")
        # the first bad line's error, whichever check catches it (the range check's came first)
        _stdin(monkeypatch, ["seven", "seven banana", "five million"])
        assert_one_line_error(cli("predict", "--checkpoint", out), "input line 2: unknown token 'banana'")
        _stdin(monkeypatch, ["-", "twelve seven"])
        assert_one_line_error(cli("predict", "--checkpoint", out), "input line 1: no tokens")
        for words in ("nineteen hundred", "one thousand zero", "twelve seven"):
            _stdin(monkeypatch, ["seven", words])
            assert_one_line_error(
                cli("predict", "--checkpoint", out),
                f"input line 2: {words!r} is not a number written as the model was trained on",
            )
    if direction == "digits2words":  # a number beyond --max-number was translated into garbage
        _stdin(monkeypatch, ["312", "9999", "10000"])
        assert_one_line_error(
            cli("predict", "--checkpoint", out),
            "input line 3: 10000 is outside the numbers the model was trained on, [0, 10000)",
        )
        _stdin(monkeypatch, ["312", "3x", "10000"])  # the first bad line's error, whichever check
        assert_one_line_error(cli("predict", "--checkpoint", out), "input line 2: unknown token 'x'")
        # training wrote str(n): "007" was fed as 0, 0, 7, an input the model never saw
        seen, translate = [], S.translate
        monkeypatch.setattr(
            S, "translate", lambda mdl, srcs, *a, **k: seen.extend(srcs) or translate(mdl, srcs, *a, **k)
        )
        _stdin(monkeypatch, ["007", "0 0", "0", "00010000"])
        assert_one_line_error(cli("predict", "--checkpoint", out), "input line 4: 10000 is outside")
        _stdin(monkeypatch, ["007", "0 0", "0", "0 1 2"])
        assert cli("predict", "--checkpoint", out).rc == 0
        assert seen == [["7"], ["0"], ["0"], ["1", "2"]]


def test_output_lines_answer_input_lines(cli, tmp_path, monkeypatch, conllu):
    """Blank input lines were skipped: seq2seq's and tag's outputs, which do not echo the input, then
    stood beside the wrong input lines (``paste in.txt out.txt``). A blank line now gets an empty
    output line; an error names the input's line, not its count of non-blank items."""
    out = tmp_path / "s"
    r = cli("train", "seq2seq", "--n-train", 64, "--n-valid", 16, "--batch-size", 16, "--out", out, *TINY)
    assert r.rc == 0, r.err
    items = ["three hundred twelve", "twenty one", "seven"]
    _stdin(monkeypatch, items)
    alone = cli("predict", "--checkpoint", out).out.split("\n")[:-1]
    assert len(alone) == 3
    _stdin(monkeypatch, ["", items[0], "   ", "", items[1], items[2], ""])
    r = cli("predict", "--checkpoint", out)
    assert r.rc == 0, r.err
    assert r.out.split("\n")[:-1] == ["", alone[0], "", "", alone[1], alone[2], ""]
    _stdin(monkeypatch, ["", "seven", "", "seven banana"])
    assert_one_line_error(cli("predict", "--checkpoint", out), "input line 4: unknown token 'banana'")

    tag = tmp_path / "t"
    assert cli("train", "tag", "--data", conllu, "--out", tag, *TINY).rc == 0
    inp = tmp_path / "in.txt"
    inp.write_text("a tree\n\nThe big dog .\n", encoding="utf-8")
    r = cli("predict", "--checkpoint", tag, "--input", inp)
    assert r.rc == 0, r.err
    lines = r.out.split("\n")[:-1]
    assert len(lines) == 3 and lines[1] == "" and lines[2].startswith("The/") and lines[0].startswith("a/")


def test_a_last_line_of_spaces_is_a_line(tmp_path):
    """A last line of spaces without a line end was taken for the end of the file (stripped first,
    then dropped as the "" after the last line end): one output line short of the input's lines."""
    from rnnkit.cli.predict import _lines

    cases = {"a\n  ": ["a", ""], "a\n  \n": ["a", ""], "a\n": ["a"], "a": ["a"], "\na\r\n\t\r": ["", "a", ""]}
    for text, want in cases.items():
        (tmp_path / "in.txt").write_bytes(text.encode())
        assert _lines(str(tmp_path / "in.txt")) == want, text


def test_forecast_continues_the_series(cli, tmp_path, series_csv):
    out = tmp_path / "f"
    r = cli("train", "forecast", "--data", series_csv, "--column", "value", "--window", 8, "--horizon", 4,
            "--arima-order", "none", "--out", out, *TINY)  # fmt: skip
    assert r.rc == 0, r.err
    run = _run(out)
    values, _ = F.load_series(str(series_csv), "value")
    s = F.Series.split(values, 8, 4)
    assert run["normalization"] == {"mean": s.mean, "std": s.std}
    r = cli("predict", "--checkpoint", out, "--input", series_csv, "--horizon", 6)  # column: the run's
    assert r.rc == 0, r.err
    model = F.Forecaster(run["model"]["arch"])
    load_model_weights(out, out, model)
    want = F.forecast_next(model, values, 8, 6, s.mean, s.std)
    got = [line.split("\t") for line in r.out.splitlines()]
    assert [int(k) for k, _ in got] == list(range(1, 7))
    assert [float(v) for _, v in got] == pytest.approx(want.tolist(), rel=1e-5)
    # without --input: the run's own series (run.json records its resolved path)
    assert cli("predict", "--checkpoint", out, "--horizon", 6).out == r.out


def test_forecast_of_another_series_says_whose_normalization_it_gets(cli, tmp_path, series_csv, monkeypatch):
    """A CSV run given ``--input sunspots`` (or another file or column) forecast it with the CSV's
    training mean and std without a word; it still does (new data is what predict is for), with a
    note on stderr naming the run's series and the statistics applied. Its own series gets none."""
    out = tmp_path / "f"
    r = cli("train", "forecast", "--data", series_csv, "--column", "value", "--window", 8, "--horizon", 4,
            "--arima-order", "none", "--out", out, *TINY)  # fmt: skip
    assert r.rc == 0, r.err
    norm = _run(out)["normalization"]
    monkeypatch.chdir(series_csv.parent)
    for own in ([], ["--input", series_csv], ["--input", "series.csv", "--column", "value"]):
        r = cli("predict", "--checkpoint", out, *own)
        assert r.rc == 0 and r.err == "", (own, r.err)
    other = tmp_path / "other.csv"
    other.write_text("value\n" + "\n".join(str(1000 + 10 * k) for k in range(20)) + "\n")
    load = F.load_series
    monkeypatch.setattr(
        F, "load_series", lambda d, c, flag: load(other, "value") if d == "sunspots" else load(d, c)
    )
    for argv, what in (
        (["--input", other], f"--input {other} (column 'value')"),
        (["--input", series_csv, "--column", "t"], f"--input {series_csv} (column 't')"),
        (["--input", "sunspots"], "--input sunspots"),
    ):
        r = cli("predict", "--checkpoint", out, *argv)
        assert r.rc == 0, r.err
        assert len(r.out.splitlines()) == 4  # forecast all the same
        assert r.err == (
            f"rnnkit: note: {what} is not the series {out} was trained on ({series_csv}:value); it is "
            f"normalized with that run's training mean {norm['mean']:.6g} and standard deviation "
            f"{norm['std']:.6g}\n"
        )


def test_forecast_of_a_column_whose_name_holds_a_colon(cli, tmp_path, series_csv):
    """run.json's data is "PATH.csv:COLUMN": predict took the column after its last ':' and the
    path before it, so a column "temp:C" read column "C" of file "PATH.csv:temp"."""
    data = tmp_path / "colon.csv"
    data.write_text(series_csv.read_text().replace("value", "temp:C", 1))
    out = tmp_path / "f"
    r = cli("train", "forecast", "--data", data, "--column", "temp:C", "--window", 8, "--horizon", 4,
            "--arima-order", "none", "--out", out, *TINY)  # fmt: skip
    assert r.rc == 0, r.err
    r = cli("predict", "--checkpoint", out, "--horizon", 3)  # the run's own file and column
    assert r.rc == 0, r.err
    assert (
        r.out
        == cli("predict", "--checkpoint", out, "--input", data, "--column", "temp:C", "--horizon", 3).out
    )


def test_runs_it_cannot_use(cli, tmp_path, text_file, text_csv):
    lm = tmp_path / "lm"
    assert cli("train", "charlm", "--data", text_file, "--out", lm, *TINY).rc == 0
    assert_one_line_error(cli("predict", "--checkpoint", lm), "'charlm' run", "rnnkit sample")
    c = tmp_path / "c"
    assert cli("train", "classify", "--data", text_csv, "--out", c, *TINY).rc == 0
    run = _run(c)
    del run["tokens"]  # as written by rnnkit before predict existed
    (c / "run.json").write_text(json.dumps(run))
    assert_one_line_error(
        cli("predict", "--checkpoint", c, "--input", text_csv), "no 'tokens'", "train it again"
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    run["tokens"] = "word"
    (c / "run.json").write_text(json.dumps(run))
    assert_one_line_error(cli("predict", "--checkpoint", c, "--input", empty), "no lines to predict")


def test_forecast_of_a_sunspots_run_needs_no_input(cli, tmp_path):
    pytest.importorskip("statsmodels")
    out = tmp_path / "sun"
    r = cli("train", "forecast", "--data", "sunspots", "--window", 12, "--horizon", 3,
            "--arima-order", "none", "--out", out, *TINY)  # fmt: skip
    assert r.rc == 0, r.err
    r = cli("predict", "--checkpoint", out)
    assert r.rc == 0, r.err
    steps = [line.split("\t") for line in r.out.splitlines()]
    assert [int(k) for k, _ in steps] == [1, 2, 3] and all(math.isfinite(float(v)) for _, v in steps)


def test_forecast_of_a_sunspots_run_on_a_csv_asks_for_the_column(cli, tmp_path, series_csv):
    # the run's description "sunspots (statsmodels, yearly)" was taken for the default column
    pytest.importorskip("statsmodels")
    out = tmp_path / "sun"
    r = cli("train", "forecast", "--data", "sunspots", "--window", 12, "--horizon", 3,
            "--arima-order", "none", "--out", out, *TINY)  # fmt: skip
    assert r.rc == 0, r.err
    r = cli("predict", "--checkpoint", out, "--input", series_csv)
    assert_one_line_error(r, "--column NAME", "sunspots")
    assert "no column" not in r.err
    r = cli("predict", "--checkpoint", out, "--input", series_csv, "--column", "value")
    assert r.rc == 0, r.err
    assert len(r.out.splitlines()) == 3


def test_forecast_input_errors_name_the_input_flag(cli, tmp_path, series_csv):
    # the series loader's messages named --data, a flag rnnkit predict does not have
    out = tmp_path / "f"
    r = cli("train", "forecast", "--data", series_csv, "--column", "value", "--window", 8, "--horizon", 4,
            "--arima-order", "none", "--out", out, *TINY)  # fmt: skip
    assert r.rc == 0, r.err
    for argv, want in (
        (["--input", tmp_path / "none.csv"], "--input"),
        (["--input", "-"], "not stdin"),
    ):
        r = cli("predict", "--checkpoint", out, *argv)
        assert_one_line_error(r, want)
        assert "--data" not in r.err


def test_forecast_flags_on_another_run_are_errors(cli, tmp_path, text_csv):
    """--horizon and --column, forecast's flags, were silently ignored on a classify, tag or
    seq2seq run (a user asking for 24 steps got one label per line and no word)."""
    c = tmp_path / "c"
    assert cli("train", "classify", "--data", text_csv, "--out", c, *TINY).rc == 0
    for flag, value in (("--horizon", 24), ("--column", "text")):
        r = cli("predict", "--checkpoint", c, "--input", text_csv, flag, value)
        assert_one_line_error(r, f"{flag} is for forecast runs", "'classify' run")
        assert r.out == ""


def test_an_input_line_is_the_text_the_csv_reader_gives(tmp_path):
    """``predict`` stripped its input lines and the ``text,label`` reader of training does not
    strip its cells: a ``--tokens char`` model got other tokens (no edge spaces) for the same
    text. A line is now taken as it is (a whitespace-only one is still blank)."""
    from rnnkit.cli.predict import _lines
    from rnnkit.tasks.classify import read_text_csv

    texts = ["  good day ", "\tbad\tday", "ok"]
    (tmp_path / "train.csv").write_text("".join(f'"{t}",pos\n' for t in texts), encoding="utf-8")
    (tmp_path / "in.txt").write_text("\r\n".join(texts) + "\n \n", encoding="utf-8")
    assert [t for t, _ in read_text_csv(tmp_path / "train.csv")] == texts
    assert _lines(str(tmp_path / "in.txt")) == [*texts, ""]


@pytest.mark.parametrize("reader", ["classify", "forecast", "tag", "predict"])
def test_a_non_utf8_file_is_refused_naming_the_bad_bytes_offset(reader, tmp_path):
    """The offset was the decoder's ``start``: counted from its 8 KiB chunk of a file read with
    ``open`` (the classify and forecast CSV readers named byte 7438 of a file bad at 32014) and,
    under ``utf-8-sig``, from after a BOM (3 bytes short). It is now the offset in the file."""
    from rnnkit.cli.predict import _lines
    from rnnkit.tasks import tag as T

    head = {
        "classify": b"text,label\n" + b"hello world,pos\n" * 2000,
        "forecast": b"value\n" + b"1.5\n" * 8000,
    }
    head["tag"] = b"1\tThe\tthe\tDET\t_\t_\t0\troot\t_\t_\n\n"
    head["predict"] = b"hello\n"
    data = codecs.BOM_UTF8 + head[reader] + b"caf\xe9,neg\n"
    f = tmp_path / "bad.txt"
    f.write_bytes(data)
    read = {
        "classify": lambda: C.read_text_csv(f),
        "forecast": lambda: F.load_series(str(f), "value"),
        "tag": lambda: T.read_conllu(f),
        "predict": lambda: _lines(str(f)),
    }[reader]
    at = data.index(b"caf") + 3
    with pytest.raises(ValueError, match=rf"not valid UTF-8 \(byte {at}\)"):
        read()


def test_a_substituted_stdin_without_bytes_names_no_wrong_offset(monkeypatch):
    """A text stdin with no ``.buffer`` (one a caller substituted) decodes itself: the error named
    its decoder's ``start`` as the input's byte (4 here, after a ``utf-8-sig`` BOM; the bad one is 7)."""
    from rnnkit.cli.predict import _lines

    class Text:  # a text stream without the bytes under it
        read = io.TextIOWrapper(io.BytesIO(codecs.BOM_UTF8 + b"a\nb\n\xff\n"), encoding="utf-8-sig").read

    monkeypatch.setattr("sys.stdin", Text())
    with pytest.raises(ValueError, match="^--input - could not be decoded") as e:
        _lines(None)
    assert "(byte" not in str(e.value) and "invalid start byte" in str(e.value)
