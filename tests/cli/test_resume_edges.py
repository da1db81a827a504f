"""``rnnkit train --resume`` at its edges: a run already at its budget, a killed re-save."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import assert_one_line_error, results

MEM = ["train", "memory", "--task", "adding", "--length", 5, "--n-train", 32, "--n-valid", 8,
       "--hidden", 8, "--no-progress"]  # fmt: skip


def test_resume_at_or_past_max_steps_says_there_is_nothing_to_train(cli, tmp_path):
    """A resume whose --max-steps the run had already reached trained nothing and said nothing
    (the trainer keeps a finished run finished): it says so, naming the run's step and the max."""
    assert cli(*MEM, "--out", tmp_path, "--max-steps", 3).rc == 0
    for given in (3, 2):
        r = cli(*MEM, "--out", tmp_path, "--max-steps", given, "--resume")
        assert r.rc == 0, r.err
        assert f"at step 3, already at --max-steps {given}: nothing to train" in r.out, r.out
        assert results(tmp_path)["step"] == 3
    r = cli(*MEM, "--out", tmp_path, "--max-minutes", 1e-6, "--resume")  # a spent wall-clock budget
    assert r.rc == 0 and "at step 3 (" in r.out and "already past --max-minutes 1e-06" in r.out, r.out
    r = cli(*MEM, "--out", tmp_path, "--max-steps", 5, "--resume")  # a real continuation: no such line
    assert r.rc == 0 and "nothing to train" not in r.out and results(tmp_path)["step"] == 5


def test_resume_finds_the_checkpoint_a_killed_resave_left_in_the_trash(cli, tmp_path):
    """A kill between a re-save's two renames leaves the run's only checkpoint in the trash
    (``.old-step-*``) beside the new copy's temporary; the trainer's sweep moves it back, but
    --resume looked for a checkpoint before that sweep and said there was none."""
    assert cli(*MEM, "--out", tmp_path, "--max-steps", 3).rc == 0
    ckpts = tmp_path / "checkpoints"
    step = ckpts / "step-000000003"
    trash = ckpts / ".old-step-000000003-k1lled"
    trash.mkdir()
    step.rename(trash / step.name)
    (ckpts / ".tmp-step-000000003-half").mkdir()  # the new copy, never renamed into place
    # without --resume it is a run all the same (a new one trained over it, mixing checkpoints)
    r = cli(*MEM, "--out", tmp_path, "--max-steps", 5)
    assert r.rc == 1 and "already holds a run" in r.err, r.err
    r = cli(*MEM, "--out", tmp_path, "--max-steps", 5, "--resume")
    assert r.rc == 0, r.err
    assert results(tmp_path)["step"] == 5 and not list(ckpts.glob(".*step*"))


def test_forecast_resume_normalizes_with_the_runs_stored_statistics(cli, tmp_path, series_csv, monkeypatch):
    """The previous release split a series at int(N * 0.7), one value short where N * 0.7 is
    just below an integer (N = 90: 62, now 63): its run.json holds the statistics of that
    training part. --resume normalized with today's split's, so the weights trained on one
    scale went on in another while ``rnnkit predict`` kept the stored one: the run's are used."""
    from rnnkit.tasks import forecast as F

    out = tmp_path / "f"
    args = ["train", "forecast", "--data", series_csv, "--column", "value", "--arima-order", "none",
            "--window", 8, "--horizon", 3, "--out", out, "--hidden", 8, "--no-progress"]  # fmt: skip
    assert cli(*args, "--max-steps", 1).rc == 0
    doc = json.loads((out / "run.json").read_text())
    doc["normalization"] = {"mean": 0.25, "std": 0.5}  # another training part's, as an old run's
    (out / "run.json").write_text(json.dumps(doc))
    used = []
    windows = F.Series.windows
    monkeypatch.setattr(F.Series, "windows", lambda s, *a: used.append((s.mean, s.std)) or windows(s, *a))
    r = cli(*args, "--max-steps", 2, "--resume")
    assert r.rc == 0, r.err
    assert used and set(used) == {(0.25, 0.5)}, used
    assert "normalization" in r.out and results(out)["step"] == 2


def _edit_run(out, **changes) -> None:
    doc = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**doc, **changes}))


def test_resume_refuses_data_that_reads_as_other_classes_or_vocabulary(cli, tmp_path, text_csv, conllu):
    """The previous release took a text,label header after a blank line as a data row (a class
    'label', a token 'text'): today the file reads as fewer classes, and --resume died in the
    checkpoint load on a size mismatch; a vocabulary of the same size in another order (the file
    edited) trained silently on mis-encoded words. Both are refused, naming what differs."""
    out = tmp_path / "c"
    args = ["train", "classify", "--data", text_csv, "--out", out, "--hidden", 8, "--no-progress"]
    assert cli(*args, "--max-steps", 1).rc == 0
    run = json.loads((out / "run.json").read_text())
    _edit_run(out, classes=["label", *run["classes"]])  # as the old release read a blank line first
    r = cli(*args, "--max-steps", 2, "--resume")
    assert_one_line_error(r, "--resume", "classes where the run has", "['label']", "another --out")
    _edit_run(out, classes=run["classes"])
    assert cli(*args, "--max-steps", 2, "--resume").rc == 0  # the same encoding: resumed

    out = tmp_path / "t"
    args = ["train", "tag", "--data", conllu, "--out", out, "--hidden", 8, "--no-progress"]
    assert cli(*args, "--max-steps", 1).rc == 0
    vocab = json.loads((out / "run.json").read_text())["vocab"]
    _edit_run(out, vocab=[*vocab[:2], *reversed(vocab[2:])])
    assert_one_line_error(cli(*args, "--max-steps", 2, "--resume"), "vocab", "in another order")


def test_forecast_resume_takes_window_and_arima_order_from_the_run(cli, tmp_path, monkeypatch):
    """--resume split the series by the command line's --window (the default 24) before reading
    the run's 8: a series too short for 24 failed ('too short for --window 24'); --arima-order was
    not stored, so a run trained with 'none' asked for statsmodels (the default 3,0,0) on resume."""
    import math

    import rnnkit.cli.forecast as cli_forecast

    data = tmp_path / "short.csv"
    data.write_text("\n".join(["value", *(f"{math.sin(t / 4):.5f}" for t in range(60))]) + "\n")
    out = tmp_path / "f"
    args = ["train", "forecast", "--data", data, "--column", "value", "--out", out, "--hidden", 8,
            "--no-progress"]  # fmt: skip
    assert cli(*args, "--window", 8, "--horizon", 3, "--arima-order", "none", "--max-steps", 1).rc == 0
    assert json.loads((out / "run.json").read_text())["arima_order"] == "none"
    monkeypatch.setattr(cli_forecast, "require", lambda *a: pytest.fail("ARIMA asked for on resume"))
    r = cli(*args, "--max-steps", 2, "--resume")
    assert r.rc == 0, r.err
    # restored silently: the parser's defaults (24, 12, 3,0,0) are no "command line's" flags to name
    assert "--window" not in r.out and "--arima-order" not in r.out and "ignored" not in r.out, r.out
    assert results(out)["step"] == 2 and "test_rmse_arima" not in results(out)
    r = cli(*args, "--max-steps", 3, "--resume", "--window", 8, "--horizon", 4, "--arima-order", "1,0,0")
    assert r.rc == 0, r.err
    assert "--window 8 --horizon 3 (command line's --horizon 4 ignored)" in r.out, r.out
    assert "--arima-order none (command line's 1,0,0 ignored)" in r.out, r.out
    assert results(out)["step"] == 3 and "test_rmse_arima" not in results(out)


def test_resume_names_the_model_flags_it_ignores_and_only_those(cli, tmp_path, text_csv):
    """'resuming with the model stored in run.json (command-line architecture ignored)' was printed
    whenever the parser's defaults differed from the run's model, also on a resume giving no
    model flag at all; it is printed only for the model flags given, naming them."""
    argv = ["train", "classify", "--data", text_csv, "--out", tmp_path, "--no-progress"]
    assert cli(*argv, "--hidden", 8, "--layers", 2, "--embedding-dim", 4, "--max-steps", 1).rc == 0
    r = cli(*argv, "--max-steps", 2, "--resume")  # no model flag: the run's model, nothing to say
    assert r.rc == 0, r.err
    assert "model stored" not in r.out, r.out
    r = cli(*argv, "--hidden", 8, "--layers", 3, "--embedding-dim", 6, "--max-steps", 3, "--resume")
    assert r.rc == 0, r.err
    assert "command-line --layers, --embedding-dim ignored" in r.out, r.out
    assert results(tmp_path)["step"] == 3


def test_tag_resume_checks_the_validation_file(cli, tmp_path, conllu):
    """tag's --valid was not recorded: a resume without it (or with another file) trained on a
    90% split of --data, other sentences than the run's, without a word."""
    out, valid = tmp_path / "t", tmp_path / "valid.conllu"
    valid.write_text(conllu.read_text(encoding="utf-8"), encoding="utf-8")
    args = ["train", "tag", "--data", conllu, "--out", out, "--hidden", 8, "--no-progress"]
    assert cli(*args, "--valid", valid, "--max-steps", 1).rc == 0
    assert json.loads((out / "run.json").read_text())["valid_data"] == str(valid.resolve())
    assert_one_line_error(cli(*args, "--max-steps", 2, "--resume"), "validated on", "valid.conllu", "None")
    assert cli(*args, "--valid", valid, "--max-steps", 2, "--resume").rc == 0
    _edit_run(out, valid_data=None)  # (a run without --valid: null; an older run: no key, unchecked)
    assert_one_line_error(cli(*args, "--valid", valid, "--max-steps", 3, "--resume"), "validated on None")


def test_an_interrupted_train_says_resume_continues_from_its_last_checkpoint(cli, tmp_path, monkeypatch):
    """Ctrl-C in ``rnnkit train`` printed only ``rnnkit: interrupted``: with a checkpoint in --out
    it says that --resume continues from it, naming the step; with none (or another command), not."""
    from rnnkit.train import Trainer

    def evaluate(self, data):  # validations at steps 1 and 2 (each checkpointed), Ctrl-C at the third
        if self.step == 3:
            raise KeyboardInterrupt
        return {"loss": 1.0, "ppl": 1.0, "tokens": 1}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    out = tmp_path / "r"
    r = cli(*MEM, "--out", out, "--max-steps", 5, "--val-every", 1)
    assert r.rc == 130
    ckpt = out / "checkpoints" / "step-000000002"
    hint = f"the same command with --resume continues from the last checkpoint ({ckpt}, step 2)"
    want = f"rnnkit: interrupted; {hint}"
    assert r.err.strip().splitlines() == [want], r.err
    r = cli(*MEM, "--out", tmp_path / "new", "--max-steps", 5, "--val-every", 3)  # before any checkpoint
    assert r.rc == 130 and r.err.strip().splitlines() == ["rnnkit: interrupted"], r.err


def test_an_interrupt_is_said_by_rank_0_only(cli, tmp_path, monkeypatch):
    """torchrun sends Ctrl-C to every rank, and each printed ``rnnkit: interrupted ...``: a rank
    other than 0 leaves with 130 and says nothing."""
    from rnnkit.train import Trainer

    def evaluate(self, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setenv("RANK", "1")
    r = cli(*MEM, "--out", tmp_path / "r", "--max-steps", 5, "--val-every", 1)
    assert r.rc == 130 and r.err == "", r.err


def test_charlm_resume_keeps_the_runs_budget_unless_one_is_typed(cli, tmp_path, text_file):
    """charlm's learning-rate schedule spans its budget, which docs/cli.md says a resume restores
    when none is typed. It was not stored: such a resume ran the steps left on the default 5-minute
    budget's schedule (other rates, and minutes of training). A typed budget goes on past the
    run's, saying so (the rates of the steps left follow it)."""
    import shutil

    pytest.importorskip("rnnkit.tasks.charlm")
    args = ["train", "charlm", "--data", text_file, "--checkpoint-every", 2, "--amp", "off", "--log-every", 1,
            "--hidden", 8, "--layers", 1, "--seq-len", 16, "--batch-size", 4, "--embedding-dim", 8,
            "--no-progress", "--epochs", 1]  # fmt: skip  # (--epochs: a 5-minute budget fails fast)
    full = tmp_path / "full"
    assert cli(*args, "--max-steps", 4, "--out", full).rc == 0

    def rows(out):
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"], r["lr"]) for r in map(json.loads, lines) if r["split"] == "train"]

    for budget in ([], ["--max-steps", 6]):  # none typed; a longer one
        cut = tmp_path / f"cut{len(budget)}"
        (cut / "checkpoints").mkdir(parents=True)
        shutil.copy(full / "run.json", cut / "run.json")
        shutil.copytree(full / "checkpoints" / "step-000000002", cut / "checkpoints" / "step-000000002")
        (cut / "checkpoints" / "latest").write_text("step-000000002\n")
        r = cli(*args, *budget, "--out", cut, "--resume")
        assert r.rc == 0, r.err
        said = "resuming with the budget --max-steps 6 (the run's was --max-steps 4)" in r.out
        assert said == bool(budget), r.out
        assert (rows(cut) == rows(full)[2:]) != bool(budget) and results(cut)["step"] == (6 if budget else 4)
    r = cli(*args, "--out", tmp_path / "cut2", "--resume")  # the budget the last resume trained to
    assert r.rc == 0 and "already at --max-steps 6: nothing to train" in r.out, r.out


def test_run_json_has_a_format_version_and_refuses_a_newer_one(cli, tmp_path):
    """run.json had no format version: a run written by a newer rnnkit (fields meaning what this
    one does not know) was read as its own. New runs write ``format_version``; a run without it (the
    legacy format) resumes as before and keeps its lack of one; a newer one, or one that is no
    version, is a one-line error naming both versions."""
    from rnnkit.cli import CLIError
    from rnnkit.cli.rundir import RUN_FORMAT_VERSION, read_run

    out = tmp_path / "r"
    assert cli(*MEM, "--out", out, "--max-steps", 2).rc == 0
    doc = json.loads((out / "run.json").read_text())
    assert doc["format_version"] == RUN_FORMAT_VERSION == 1
    legacy = {k: v for k, v in doc.items() if k != "format_version"}
    (out / "run.json").write_text(json.dumps(legacy))
    r = cli(*MEM, "--out", out, "--max-steps", 3, "--resume")
    assert r.rc == 0 and results(out)["step"] == 3, r.err
    assert "format_version" not in json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**doc, "format_version": 2}))
    r = cli(*MEM, "--out", out, "--max-steps", 4, "--resume")
    assert_one_line_error(r, "run.json has format_version 2, newer than this rnnkit reads (1)")
    with pytest.raises(CLIError, match=r"format_version 2, newer than this rnnkit reads \(1\)"):
        read_run(out)  # what predict, sample and eval read too
    for bad in ("1", 0, True, 1.0):
        (out / "run.json").write_text(json.dumps({**doc, "format_version": bad}))
        r = cli(*MEM, "--out", out, "--max-steps", 4, "--resume")
        assert_one_line_error(r, f"format_version must be an int >= 1, got {bad!r}")
    assert results(out)["step"] == 3
