"""``rnnkit predict``: use a model trained by ``rnnkit train forecast|classify|tag|seq2seq``.

The run directory's ``run.json`` says which task it is and how to rebuild the model; the
latest checkpoint (or the step directory given; ``--best``: the best validation's, kept by
``rnnkit train --save-best``) supplies the weights. Input comes from
``--input`` (default: standard input), one item per line; results go to standard output,
one line per input line, tab-separated (a blank input line gets an empty output line, so
output line N answers input line N):

    rnnkit predict --checkpoint runs/news --input headlines.txt     # label <TAB> p <TAB> text
    rnnkit predict --checkpoint runs/pos  --input sentences.txt     # word/TAG word/TAG ...
    echo "three hundred twelve" | rnnkit predict --checkpoint runs/s2s   # 312
    rnnkit predict --checkpoint runs/sun  --horizon 24              # step <TAB> forecast

The character LM has its own commands (``rnnkit sample``, ``rnnkit eval``).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnnkit.cli import CLIError
from rnnkit.cli.common import (
    add_best_argument,
    device_of,
    find_run_dir,
    load_model_weights,
    positive_int,
    read_run,
    warn,
)

__all__ = ["add_predict_parser"]


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="use a trained forecast/classify/tag/seq2seq model on new data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a run directory (--out) or checkpoint")
    add_best_argument(p)
    p.add_argument(
        "--input",
        default=None,
        metavar="FILE|-",
        help="items, one per line ('-' or absent: standard input); forecast: a CSV file or "
        "'sunspots' (default: the run's own series)",
    )
    p.add_argument("--column", default=None, help="forecast: the CSV column (default: the run's)")
    p.add_argument("--horizon", type=positive_int, default=None, help="forecast: steps (default: the run's)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default cpu)")
    p.set_defaults(func=predict_cmd)


def _lines(path: str | None) -> list[str]:
    """The lines of ``path`` (or standard input) as they are, blank ones (empty or whitespace only)
    as ``""`` (they keep their place: :func:`_aligned`); both decoded as UTF-8, a leading BOM
    dropped. Lines end at LF, CRLF or a lone CR only; the end of the last line is no line of its
    own. Not stripped: a text is the item the CSV reader of training gives (a ``text,label`` cell
    as it is; a ``--tokens char`` model's spaces are tokens), so the same text predicts the same."""
    try:
        if path in (None, "-"):
            # UTF-8 as a file, not the locale's encoding (a pipe's bytes are the other program's);
            # a text stream without bytes under it (one a caller substituted) is read as it is
            raw = getattr(sys.stdin, "buffer", None)
            data = raw.read() if raw is not None else None
            text = data.decode("utf-8-sig") if data is not None else sys.stdin.read()
            text = text.removeprefix("\ufeff")  # a BOM is not text here either
        else:
            p = Path(path)
            if p.is_dir():  # (it said "no such file" of a directory that exists)
                raise IsADirectoryError(f"--input {path} is a directory, not a file")
            if not p.is_file():
                raise FileNotFoundError(f"--input {path}: no such file")
            data = p.read_bytes()
            text = data.decode("utf-8-sig")  # a BOM is not text
    except UnicodeDecodeError as e:  # (its start counts from after a BOM)
        from rnnkit.tasks._common import utf8_error_offset

        if data is None:  # the stream's own decoder: its start counts from its chunk (after its BOM),
            # and its encoding may not be UTF-8; no offset in the input is known
            raise ValueError(f"--input - could not be decoded ({e.encoding}: {e.reason})") from None
        at = utf8_error_offset(data)
        raise ValueError(f"--input {path or '-'} is not valid UTF-8 (byte {at})") from None
    # not str.splitlines: it also breaks at U+0085, U+2028, form feed, ..., characters an item may
    # hold, and one input line gave two outputs (the rest then answered the wrong lines)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[-1] == "":  # what follows the last line end ("" in a file that ends with one); before
        lines.pop()  # stripping: a last line of spaces without a line end is a line (an empty output)
    lines = [ln if ln.strip() else "" for ln in lines]
    if not any(lines):
        raise ValueError(f"--input {path or '-'}: no lines to predict")
    return lines


# How the library's errors about one of a list of inputs begin (``input K: ...``, K from 1).
_INPUT_K = re.compile(r"input (\d+): ")


def _aligned(lines: list[str], predict: Callable[[list[str]], list[str]]) -> list[str]:
    """``predict`` of the non-blank ``lines``, one output line per input line, a blank line's empty
    (blank lines were skipped: the outputs of seq2seq and tag, which do not echo their input, then
    answered the wrong lines). The library's error about its ``input K`` names the line instead."""
    where = [n for n, ln in enumerate(lines, 1) if ln]
    try:
        results = predict([lines[n - 1] for n in where])
    except ValueError as e:
        m = _INPUT_K.match(str(e))
        if m is None:
            raise
        raise ValueError(f"input line {where[int(m[1]) - 1]}: {str(e)[m.end() :]}") from None
    out = [""] * len(lines)
    for n, res in zip(where, results, strict=True):
        out[n - 1] = res
    return out


def _need(run: dict[str, Any], key: str, run_dir: Path) -> Any:
    if run.get(key) is None:
        raise ValueError(
            f"{run_dir}/run.json has no {key!r}: the run was trained by an older rnnkit that did not "
            "store what prediction needs; train it again"
        )
    return run[key]


def predict_cmd(args: argparse.Namespace) -> int:
    run_dir = find_run_dir(args.checkpoint)
    run = read_run(run_dir)
    task = run["task"]
    if task not in _TASKS:
        hint = "use rnnkit sample / rnnkit eval" if task == "charlm" else "its inputs are synthetic"
        raise ValueError(f"rnnkit predict: {run_dir} is a {task!r} run ({hint})")
    for flag, value in (("--column", args.column), ("--horizon", args.horizon)):
        if value is not None and task != "forecast":  # (ignored silently, they changed nothing)
            raise CLIError(f"{flag} is for forecast runs; {run_dir} is a {task!r} run", code=2)
    model, use = _TASKS[task](run, run_dir, args)
    load_model_weights(args.checkpoint, run_dir, model, best=args.best)
    model.to(device_of(args)).eval()
    for line in use(model):
        print(line)
    return 0


def _forecast(run: dict[str, Any], run_dir: Path, args: argparse.Namespace):
    from rnnkit.tasks import forecast as F

    norm = _need(run, "normalization", run_dir)
    trained = str(run.get("data", ""))
    # a CSV run's data is "PATH.csv:COLUMN", its path resolved (an older run's: a base name, unusable),
    # and its column on its own (older runs: after the last ':', wrong for a name holding one)
    stored_col = run.get("column") or trained.rpartition(":")[2]
    csv_path = trained[: -len(stored_col) - 1] if trained.endswith(":" + stored_col) else ""
    own = "sunspots" if trained.startswith("sunspots") else csv_path or None
    known = own == "sunspots" or bool(own) and Path(own).is_absolute()  # the run's series, readable
    data = args.input or (own if known else None)
    if data is None:
        raise ValueError(f"{run_dir} was trained on {run.get('data')!r}: pass --input FILE.csv --column NAME")
    if data == "-":  # '-' is standard input for the line-per-item tasks only
        raise ValueError("--input -: a forecaster reads its series from a CSV file or 'sunspots', not stdin")
    column = args.column
    if column is None and data != "sunspots":
        # a CSV run's data is "PATH.csv:COLUMN"; a sunspots run has no column to default to
        # (its description used to be taken for one: "no column 'sunspots (statsmodels, yearly)'")
        if trained.startswith("sunspots") or ":" not in trained:
            raise ValueError(
                f"--input {data} needs --column NAME (the CSV column to forecast; {run_dir} was "
                f"trained on {trained!r})"
            )
        column = stored_col
    values, _ = F.load_series(data, column, flag="--input")
    horizon = args.horizon or run["horizon"]
    # another series is new data, forecast as such, but with this run's training statistics: said on
    # stderr (a series of another scale gets meaningless forecasts; a run's own file is not named)
    same = data == own == "sunspots" or (
        known and own != "sunspots" and data != "sunspots" and column == stored_col
        and Path(data).resolve() == Path(own).resolve()
    )  # fmt: skip

    def use(model):
        if known and not same:
            what = data if data == "sunspots" else f"{data} (column {column!r})"
            warn(
                f"note: --input {what} is not the series {run_dir} was trained on ({trained}); it is "
                f"normalized with that run's training mean {norm['mean']:.6g} and standard deviation "
                f"{norm['std']:.6g}"
            )
        pred = F.forecast_next(model, values, run["window"], horizon, norm["mean"], norm["std"])
        return [f"{k}\t{v:.6g}" for k, v in enumerate(pred.tolist(), 1)]

    return F.Forecaster(run["model"]["arch"]), use


def _classify(run: dict[str, Any], run_dir: Path, args: argparse.Namespace):
    from rnnkit.tasks import classify as C

    if not run.get("vocab"):
        raise ValueError(f"{run_dir} classifies {run.get('data')!r}: only text-CSV models take lines of text")
    tokens = _need(run, "tokens", run_dir)
    mk = {k: v for k, v in run["model"].items() if k != "arch"}
    texts = _lines(args.input)

    def use(model):
        def predict(items: list[str]) -> list[str]:
            res = C.predict_texts(model, items, run["vocab"], tokens, run["classes"])
            return [f"{label}\t{p:.4f}\t{text}" for (label, p), text in zip(res, items, strict=True)]

        return _aligned(texts, predict)

    return C.classifier(run["model"]["arch"], len(run["classes"]), mk), use


def _tag(run: dict[str, Any], run_dir: Path, args: argparse.Namespace):
    from rnnkit.tasks import tag as T

    words = _need(run, "vocab", run_dir)
    lines = _lines(args.input)

    def use(model):
        def predict(items: list[str]) -> list[str]:
            sentences = [ln.split() for ln in items]
            res = T.predict_tags(model, sentences, words, run["tags"])
            return [" ".join(f"{w}/{t}" for w, t in zip(s, ts, strict=True)) for s, ts in zip(sentences, res)]

        return _aligned(lines, predict)

    return T.tagger(run["model"]["arch"], run["words"], len(run["tags"]), run["model"]["embedding_dim"]), use


def _seq2seq(run: dict[str, Any], run_dir: Path, args: argparse.Namespace):
    from rnnkit.tasks import seq2seq as S

    m = run["model"]
    digits_in = run.get("direction") == "digits2words"
    # words2digits reads words and writes digits ("312"); digits2words the other way round
    lines = _lines(args.input)
    joiner = " " if digits_in else ""

    def use(model):
        def predict(items: list[str]) -> list[str]:
            words = [ln.lower().replace("-", " ").split() for ln in items]
            # digits without any whitespace (a line is no longer stripped: an edge tab was a token)
            sources = [_digits("".join(ln.split())) for ln in items] if digits_in else words
            max_number = (run.get("data") or {}).get("max_number")
            try:
                if digits_in:
                    _check_trained_range(sources, max_number)
                else:
                    _check_number_words(sources, m["src_vocab"], max_number)
            except ValueError as e:  # the first bad line's error, whichever check catches it
                bad = int(_INPUT_K.match(str(e))[1])
                S.source_ids(sources[: bad - 1], m["src_vocab"])  # an earlier line's unknown token first
                raise
            return [joiner.join(t) for t in S.translate(model, sources, m["src_vocab"], m["tgt_vocab"])]

        return _aligned(lines, predict)

    return S.Seq2Seq(m["arch"], len(m["src_vocab"]), len(m["tgt_vocab"]), m["embedding_dim"]), use


def _digits(number: str) -> list[str]:
    """The tokens of a digits2words input: its digits, without leading zeros ("007" -> 7, "000" ->
    0), as training wrote them (``str(n)``): "007" was fed as 0, 0, 7, an input never trained on.
    Anything but ASCII digits is kept as it is, for ``translate``'s unknown-token error."""
    if number.isdecimal() and number.isascii():
        number = number.lstrip("0") or "0"
    return list(number)


def _check_trained_range(sources: list[list[str]], max_number: int | None) -> None:
    """A digits2words number at or above the run's ``--max-number`` was translated all the same:
    the model never saw one, and its words were garbage. It is an error naming the trained range
    (a run without the range recorded is not checked; a non-digit is ``translate``'s error)."""
    if max_number is None:
        return
    for i, src in enumerate(sources, 1):
        digits = "".join(src)
        if digits.isdecimal() and digits.isascii() and int(digits) >= max_number:
            raise _outside(i, digits, max_number)


def _check_number_words(sources: list[list[str]], src_vocab: list[str], max_number: int | None) -> None:
    """A words2digits input that is no number in the trained range as training wrote it ("five
    million" on a run trained below 10000, "one hundred and five") was translated all the same, into
    garbage: an error naming the input, in digits2words's words for the range (a run without the
    range recorded is not range-checked; a word outside the vocabulary is ``translate``'s error)."""
    from rnnkit.tasks.seq2seq import SPECIALS, number_to_words, words_to_number

    known = set(src_vocab[len(SPECIALS) :])
    for i, src in enumerate(sources, 1):
        if not src or not known.issuperset(src):
            continue
        n, text = words_to_number(src), " ".join(src)
        if n is None:
            raise ValueError(
                f"input {i}: {text!r} is not a number written as the model was trained on (e.g. "
                f"{' '.join(number_to_words(2041))!r})"
            )
        if max_number is not None and n >= max_number:
            raise _outside(i, f"{text!r} ({n})", max_number)


def _outside(i: int, shown: str, max_number: int) -> ValueError:
    """The error of input ``i`` (``shown`` as the user wrote it) at or above the trained range."""
    return ValueError(
        f"input {i}: {shown} is outside the numbers the model was trained on, [0, {max_number}) "
        "(its --max-number)"
    )


_TASKS = {"forecast": _forecast, "classify": _classify, "tag": _tag, "seq2seq": _seq2seq}
