"""Every ``rnnkit train`` task end to end on tiny data (a few steps, tiny models)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import torch

from tests.cli.conftest import TINY, assert_one_line_error, assert_run_files, results


def test_python_m_rnnkit_help():
    r = subprocess.run(
        [sys.executable, "-m", "rnnkit", "--help"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    for cmd in ("train", "sample", "eval"):
        assert cmd in r.stdout


def test_every_command_help_has_a_description():
    """``rnnkit diagnose --help`` and ``rnnkit study --help`` went from the usage straight to the
    options, without the line that says what the command does (every other command has one)."""
    from rnnkit.cli import _commands, build_parser

    commands = _commands(build_parser())
    assert {"diagnose", "study", "predict", "train memory"} <= commands.keys()
    for name, parser in commands.items():
        assert parser.description and len(parser.description.strip()) > 20, name


def test_train_help_lists_every_task(cli):
    r = cli("train", "--help")
    assert r.rc == 0
    for task in ("charlm", "forecast", "classify", "tag", "seq2seq", "memory"):
        assert task in r.out


def test_val_every_help_states_the_default_in_use(cli):
    # charlm validates every 250 steps; its help used to say "every epoch end" like the others
    import re

    from rnnkit.cli import build_parser

    for task, want in (("charlm", 250), ("forecast", None)):
        args = build_parser().parse_args(["train", task])
        assert args.val_every == want
        text = " ".join(cli("train", task, "--help").out.split())
        shown = re.search(r"--val-every N validate every N steps \(default: ([^)]*)\)", text).group(1)
        assert shown == ("250 and at the end" if want else "every epoch end and at the end"), shown


def test_dropout_help_says_where_it_drops(cli):
    # charlm's --dropout also drops the top layer's output before the softmax head (CharLM.drop),
    # with one layer too; its help said "dropout between layers" alone, as the other tasks'
    import re

    for task, head in (("charlm", True), ("tag", False)):
        text = " ".join(cli("train", task, "--help").out.split())
        shown = re.search(r"--dropout DROPOUT (.*?) --opt KEY=VALUE", text).group(1)
        assert shown.startswith("dropout between layers (torch semantics, as --opt dropout=P)"), shown
        assert ("and on the output before the softmax head (any --layers)" in shown) == head, shown


def test_train_help_states_defaults_readably(cli):
    # --max-minutes used to read "(default None)"; charlm's --hidden/--dropout both read
    # "384 and 0 below 12 min ..., else 512 and 0.2" (each flag's help gave both flags' values)
    import re

    for task in ("forecast", "classify", "tag", "seq2seq", "memory"):
        text = " ".join(cli("train", task, "--help").out.split())
        assert "default None" not in text, task
        assert "--max-minutes M wall-clock training budget (default: none)" in text, task
    text = " ".join(cli("train", "charlm", "--help").out.split())
    hidden = re.search(r"--hidden HIDDEN (.*?) --layers", text).group(1)
    dropout = re.search(r"--dropout DROPOUT (.*?) --opt KEY=VALUE", text).group(1)
    assert "384 below 12 min (bf16: 9), else 512" in hidden and "0.2" not in hidden, hidden
    assert "0 below 12 min (bf16: 9), else 0.2" in dropout and "384" not in dropout, dropout


def test_every_option_has_help():
    # `rnnkit train memory --help` showed "--task {adding,copy,plus1,arith}" with no word of
    # its default (adding), seq2seq's --direction and tag's --tag-column likewise
    import argparse

    from rnnkit.cli import build_parser

    bare = []

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")
            elif action.option_strings and not action.help:
                bare.append(f"{name} {action.option_strings[0]}")

    walk(build_parser(), "rnnkit")
    assert not bare, bare


@pytest.mark.parametrize(
    "task, arch, metric",
    [
        ("adding", "lstm", "valid_mse"),
        ("copy", "gru", "valid_recall_accuracy"),
        ("plus1", "conv-rnn", "valid_accuracy"),
        ("arith", "tcn", "valid_exact_match"),
    ],
)
def test_memory(cli, tmp_path, task, arch, metric):
    out = tmp_path / "run"
    # each benchmark's own flags (another's is a usage error)
    own = {"copy": ["--length", 6, "--n-copy", 2], "arith": ["--digits", 2]}.get(task, ["--length", 6])
    r = cli("train", "memory", "--task", task, "--arch", arch, *own,
            "--n-train", 64, "--n-valid", 16, "--batch-size", 16, "--out", out, *TINY)  # fmt: skip
    assert r.rc == 0, r.err
    assert_run_files(out)
    res = results(out)
    assert res["step"] == 3 and res["stop_reason"] == "max_steps"
    assert metric in res and "valid_loss" in res
    # a perplexity of the cross-entropy tasks alone (adding's MSE logged exp(MSE) as one)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(("ppl" in row) == (task != "adding") for row in rows)
    if arch == "tcn":
        assert "receptive field" in r.out
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["arch"]["cell"] == arch


def test_forecast_sunspots_writes_plot_and_baselines(cli, tmp_path):
    pytest.importorskip("statsmodels")
    out = tmp_path / "f"
    r = cli("train", "forecast", "--data", "sunspots", "--window", 12, "--horizon", 6, "--out", out, *TINY)
    assert r.rc == 0, r.err
    assert_run_files(out, "forecast.png")
    res = results(out)
    for k in ("test_rmse_rnnkit", "test_rmse_persistence", "test_rmse_arima"):
        assert res[k] > 0
    assert res["test_origins"] == 309 - int(309 * 0.8) - 6 + 1


def test_forecast_csv_column_teacher_forcing(cli, tmp_path, series_csv):
    out = tmp_path / "f"
    r = cli("train", "forecast", "--data", series_csv, "--column", "value", "--window", 8, "--horizon", 4,
            "--sampling", "teacher", "--arch", "tcn", "--arima-order", "none",
            "--out", out, *TINY)  # fmt: skip
    assert r.rc == 0, r.err
    assert_run_files(out, "forecast.png")
    assert "receptive field" in r.out
    res = results(out)
    assert "test_rmse_persistence" in res and "test_rmse_arima" not in res


@pytest.mark.parametrize("data", ["digits", "anyplus1"])
def test_classify_builtin(cli, tmp_path, data):
    if data == "digits":
        pytest.importorskip("sklearn")
    out = tmp_path / "c"
    own = ["--n", 64, "--length", 8] if data == "anyplus1" else []  # (the digits take neither)
    r = cli("train", "classify", "--data", data, *own, "--out", out, *TINY)
    assert r.rc == 0, r.err
    assert_run_files(out)
    assert 0.0 <= results(out)["valid_accuracy"] <= 1.0


@pytest.mark.parametrize("tokens, arch", [("word", "lstm"), ("char", "conv-gru")])
def test_classify_text_csv(cli, tmp_path, text_csv, tokens, arch):
    out = tmp_path / "c"
    r = cli("train", "classify", "--data", text_csv, "--tokens", tokens, "--arch", arch, "--out", out, *TINY)
    assert r.rc == 0, r.err
    run = json.loads((out / "run.json").read_text())
    assert run["classes"] == ["neg", "pos"]
    assert ("great" in run["vocab"]) == (tokens == "word")


@pytest.mark.parametrize("arch", ["lstm", "tcn"])
def test_tag_conllu(cli, tmp_path, conllu, arch):
    out = tmp_path / "t"
    r = cli("train", "tag", "--data", conllu, "--arch", arch, "--out", out, *TINY)
    assert r.rc == 0, r.err
    assert_run_files(out)
    run = json.loads((out / "run.json").read_text())
    assert run["tags"] == ["ADJ", "DET", "NOUN", "PUNCT", "VERB"]  # the empty node's X is skipped


@pytest.mark.parametrize(
    "direction, sampling, arch",
    [("words2digits", "teacher", "lstm"), ("digits2words", "linear", "lstm"),
     ("words2digits", "teacher", "mingru")],  # a time-parallel encoder: padded batch with lengths=
)  # fmt: skip
def test_seq2seq(cli, tmp_path, direction, sampling, arch):
    out = tmp_path / "s"
    r = cli("train", "seq2seq", "--direction", direction, "--sampling", sampling, "--n-train", 64,
            "--n-valid", 16, "--batch-size", 16, "--arch", arch, "--out", out, *TINY)  # fmt: skip
    assert r.rc == 0, r.err
    assert_run_files(out)
    assert 0.0 <= results(out)["valid_exact_match"] <= 1.0


def test_the_final_validation_row_is_in_metrics_csv_too(cli, tmp_path):
    """The CLI's final validation (the last step had none) went into metrics.jsonl only."""
    out = tmp_path / "m"
    args = ["train", "memory", "--task", "adding", "--length", 6, "--n-train", 64, "--n-valid", 16,
            "--batch-size", 8, "--hidden", 8, "--no-progress", "--max-steps", 3,
            "--val-every", 2]  # fmt: skip
    assert cli(*args, "--out", out).rc == 0
    vals = lambda rows: [(int(r["step"]), round(float(r["loss"]), 6)) for r in rows if r["split"] == "val"]  # noqa: E731
    jsonl = vals(json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines())
    with open(out / "metrics.csv", newline="") as f:
        assert vals(csv.DictReader(f)) == jsonl and [s for s, _ in jsonl] == [2, 3]


def _losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["split"], r["step"], round(r["loss"], 10)) for r in rows]


def test_resume_continues_exactly(cli, tmp_path):
    """2 steps + resume to 5 steps == 5 steps uninterrupted (same metrics, same weights)."""
    args = ["train", "memory", "--task", "adding", "--length", 6, "--n-train", 64, "--n-valid", 16,
            "--batch-size", 8, "--hidden", 8, "--log-every", 1, "--no-progress"]  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(*args, "--out", a, "--max-steps", 5).rc == 0
    assert cli(*args, "--out", b, "--max-steps", 2).rc == 0
    r = cli(*args, "--out", b, "--max-steps", 5, "--resume")
    assert r.rc == 0, r.err
    assert results(b)["step"] == 5
    train_a = [x for x in _losses(a) if x[0] == "train"]
    train_b = [x for x in _losses(b) if x[0] == "train"]
    assert train_a == train_b and len(train_a) == 5
    assert results(a)["valid_mse"] == pytest.approx(results(b)["valid_mse"], abs=1e-12)


def test_forecast_resume_keeps_the_runs_window_and_horizon(cli, tmp_path, series_csv):
    """--resume with other --window/--horizon trained (and scored) on other windows while run.json,
    which `rnnkit predict` reads, kept the run's: the stored ones are used."""
    args = ["train", "forecast", "--data", series_csv, "--column", "value", "--arima-order", "none",
            "--out", tmp_path / "f", *TINY]  # fmt: skip
    assert cli(*args, "--window", 8, "--horizon", 3, "--max-steps", 1).rc == 0
    first = results(tmp_path / "f")["test_origins"]
    r = cli(*args, "--window", 10, "--horizon", 4, "--max-steps", 2, "--resume")
    assert r.rc == 0 and "--window 8 --horizon 3" in r.out, r.err
    assert results(tmp_path / "f")["step"] == 2 and results(tmp_path / "f")["test_origins"] == first


def test_train_tunes_malloc_unless_told_not_to(cli, tmp_path, malloc_calls):
    args = ("train", "memory", "--task", "adding", "--length", 5, "--n-train", 64, "--n-valid", 16, *TINY)
    assert cli(*args, "--out", tmp_path / "a").rc == 0 and len(malloc_calls) == 1
    assert cli(*args, "--out", tmp_path / "b", "--no-tune-malloc").rc == 0 and len(malloc_calls) == 1


def test_existing_run_needs_resume(cli, tmp_path):
    args = ["train", "memory", "--task", "plus1", "--length", 5, "--n-train", 32, "--n-valid", 8, "--out",
            tmp_path, *TINY]  # fmt: skip
    assert cli(*args).rc == 0
    r = cli(*args)
    assert r.rc == 1 and "pass --resume" in r.err


def test_a_second_run_into_an_out_in_use_is_refused(cli, tmp_path):
    """A run still training (before its first checkpoint) holds --out: a second one used to rewrite
    its run.json, delete its metrics.jsonl and write checkpoints among its own."""
    import fcntl

    args = ["train", "memory", "--task", "plus1", "--length", 5, "--n-train", 32, "--n-valid", 8, "--out",
            tmp_path, *TINY]  # fmt: skip
    (tmp_path / "run.json").write_text("{}")  # the first run's files, no checkpoint yet
    (tmp_path / "metrics.jsonl").write_text("")
    with open(tmp_path / ".lock", "a") as first:  # what the first process holds
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_one_line_error(cli(*args), "in use")
        assert_one_line_error(cli(*args, "--resume"), "no checkpoint")
        assert (tmp_path / "run.json").read_text() == "{}" and (tmp_path / "metrics.jsonl").is_file()
        assert not (tmp_path / "checkpoints").exists()
    assert cli(*args).rc == 0  # once it is gone
    assert cli(*args, "--resume", "--max-steps", 4).rc == 0  # and the lock goes with each command


@pytest.mark.parametrize(
    ("first", "other"),
    [
        (
            ["memory", "--task", "plus1", "--length", 5, "--n-train", 32],
            ["memory", "--task", "plus1", "--length", 6, "--n-train", 32],
        ),
        (
            ["memory", "--task", "plus1", "--length", 5, "--n-train", 32],
            ["memory", "--task", "copy", "--length", 5, "--n-train", 32],
        ),
        (["seq2seq", "--n-train", 32], ["seq2seq", "--n-train", 32, "--max-number", 500]),
        (
            ["classify", "--data", "anyplus1", "--length", 8, "--n", 64],
            ["classify", "--data", "anyplus1", "--length", 12, "--n", 64],
        ),
    ],
)
def test_resume_on_other_generated_data_is_refused(cli, tmp_path, first, other):
    """The generated tasks' data flags are checked on --resume too (before, memory and seq2seq
    runs had no `data` in run.json, anyplus1's was its name only, and they resumed on another
    task, length or range silently)."""
    common = ["--out", tmp_path, *TINY] + ([] if first[0] == "classify" else ["--n-valid", 8])
    assert cli("train", *first, *common).rc == 0
    assert cli("train", *first, *common, "--resume").rc == 0  # the same data: continues
    r = cli("train", *other, *common, "--resume")
    assert_one_line_error(r, "was trained on")


def test_diagnose_is_wired(cli):
    pytest.importorskip("rnnkit.diagnostics")
    r = cli("diagnose", "--help")
    assert r.rc == 0 and "--variants" in r.out


def test_run_files_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    """run.json and results.json replace the old ones atomically: the new data must be on disk
    before the rename, or a crash (power loss) can leave an empty run.json, the run unusable."""
    import os

    from rnnkit.cli.common import write_json

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or real_fsync(fd))  # fmt: skip
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace", str(a))) or real_replace(a, b))
    write_json({"task": "x"}, tmp_path / "run.json")
    tmp = str(tmp_path / ".run.json.tmp")
    assert events == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]
    assert json.loads((tmp_path / "run.json").read_text()) == {"task": "x"}


def test_metrics_of_a_diverged_run_are_strict_json(cli, tmp_path):
    """A diverged loss went into metrics.jsonl as a bare NaN token (the trainer's rows and the final
    validation's, which runs here: 3 steps stop inside the 2-step epoch): invalid for jq and JS."""
    from rnnkit.train import read_metrics

    def bad(token):
        raise AssertionError(f"{token} is not JSON")

    args = ["train", "memory", "--task", "adding", "--length", 5, "--n-train", 128, "--n-valid", 8,
            "--lr", 1e300, "--log-every", 1, "--out", tmp_path, *TINY]  # fmt: skip
    assert cli(*args).rc == 0
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=bad) for line in lines]
    assert rows[-1]["split"] == "val" and rows[-1]["step"] == 3 and rows[-1]["loss"] is None
    # (inf, not NaN: the updates of NaN gradients are skipped, the weights stay as step 1 left them)
    assert math.isinf(read_metrics(tmp_path / "metrics.jsonl")[-1]["loss"])


def test_results_of_a_diverged_run_are_strict_json(cli, tmp_path):
    """results.json held bare NaN tokens (the final losses and metrics of a diverged run) as
    metrics.jsonl did: now null + "nonfinite", and read_results gives the floats back."""
    from rnnkit.cli.rundir import read_results

    def bad(token):
        raise AssertionError(f"{token} is not JSON")

    args = ["train", "memory", "--task", "adding", "--length", 5, "--n-train", 128, "--n-valid", 8,
            "--lr", 1e300, "--out", tmp_path, *TINY]  # fmt: skip
    assert cli(*args).rc == 0
    doc = json.loads((tmp_path / "results.json").read_text(), parse_constant=bad)
    assert doc["valid_loss"] is None and doc["nonfinite"]["valid_loss"] == "inf"  # (NaN updates skipped)
    back = read_results(tmp_path)
    assert math.isinf(back["valid_loss"]) and math.isinf(back["valid_mse"]) and "nonfinite" not in back
    assert back["step"] == 3 and back["stop_reason"] == "max_steps"


def test_resume_restores_the_runs_training_flags(cli, tmp_path):
    """--batch-size, --lr, --clip and --seed (the generated data, the shuffling) were not stored:
    a resume without them went on with the defaults, another run than the one interrupted."""
    from safetensors.torch import load_file

    from rnnkit.train import latest_checkpoint

    task = ["train", "memory", "--task", "adding", "--length", 5, "--n-train", 96, "--n-valid", 8,
            "--hidden", 8, "--no-progress"]  # fmt: skip
    flags = ["--batch-size", 16, "--lr", 0.01, "--clip", 0.5, "--seed", 3]
    assert cli(*task, *flags, "--max-steps", 8, "--out", tmp_path / "ref").rc == 0
    assert cli(*task, *flags, "--max-steps", 4, "--out", tmp_path / "run").rc == 0
    r = cli(*task, "--max-steps", 8, "--out", tmp_path / "run", "--resume", "--lr", 0.5)  # others left out
    assert r.rc == 0, r.err
    assert "resuming with the run's --lr 0.01 (command line's 0.5 ignored)" in r.out
    # the parser's defaults of the flags not given are no "command line's" values to report
    assert r.out.count("ignored)") == 1, r.out
    got, want = (load_file(str(latest_checkpoint(tmp_path / d / "checkpoints") / "model.safetensors"))
                 for d in ("run", "ref"))  # fmt: skip
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert results(tmp_path / "run") == results(tmp_path / "ref")


def test_amp_fp16_with_a_cpu_lstm_is_refused_up_front(cli, tmp_path):
    # it failed at the first step in oneDNN's words ("could not create a primitive descriptor").
    # (In float32, the command's own dtype: autocast leaves the suite's float64 as it is.)
    from tests.conftest import default_dtype

    out = tmp_path / "r"
    copy = ["train", "memory", "--task", "copy", "--length", 6, "--n-copy", 2, "--n-train", 16]
    with default_dtype(torch.float32):
        r = cli(*copy, "--n-valid", 8, "--amp", "fp16", "--out", out, *TINY)
        assert_one_line_error(r, "--amp fp16 on the CPU", "LSTM", "no float16 kernel", "use bf16 on the CPU")
        assert r.rc == 2  # a usage error (flags that contradict each other), as --opt's; it was 1
        assert not out.exists()
        r = cli(*copy, "--n-valid", 8, "--arch", "gru", "--amp", "fp16", "--out", out, *TINY)
    assert r.rc == 0, r.err


def test_the_training_flags_given_are_known():
    """What --resume reports as ignored: the flags typed, never the parser's defaults (which are
    every flag's value when not given, and were all reported as the "command line's")."""
    from rnnkit.cli import build_parser

    args = build_parser().parse_args(
        ["train", "seq2seq", "--sampling-min", "0.1", "--clip", "0", "--lr", "1"]
    )
    assert args.given == {"sampling_min", "clip", "lr"} and args.lr == 1.0
    assert not hasattr(build_parser().parse_args(["train", "memory"]), "given")


@pytest.mark.parametrize("clip", ["-1", "nan", "inf", "x"])
def test_clip_must_be_a_finite_number_not_below_zero(cli, tmp_path, clip):
    """A negative or NaN --clip trained unclipped without a word (as 0 = off): a usage error now."""
    r = cli("train", "memory", "--clip", clip, "--out", tmp_path / "run", *TINY)
    assert_one_line_error(r, "--clip", "0 = off", repr(clip))
    assert r.rc == 2 and not (tmp_path / "run").exists()
