"""The scheduled-sampling flags of ``rnnkit train forecast|seq2seq``."""

from __future__ import annotations

import pytest

from tests.cli.conftest import TINY, assert_one_line_error, results

FORECAST = ["train", "forecast", "--column", "value", "--window", 8, "--horizon", 3, "--arima-order", "none"]


@pytest.mark.parametrize("kind", ["exponential", "inverse_sigmoid", "linear"])
def test_forecast_trains_with_every_schedule_and_its_default_k(cli, tmp_path, series_csv, kind):
    """forecast's default --sampling-k, 50 for its default inverse_sigmoid, was applied to any
    --sampling: --sampling exponential (no --sampling-k) failed with 'needs 0 < k < 1, got k=50.0'."""
    r = cli(*FORECAST, "--data", series_csv, "--sampling", kind, "--out", tmp_path / "f", *TINY)
    assert r.rc == 0, r.err
    assert results(tmp_path / "f")["step"] == 3


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--sampling-min", "2"], ["--sampling-min", "[0, 1]", "'2'"]),
        (["--sampling-min", "nan"], ["--sampling-min", "[0, 1]"]),
        (
            ["--sampling", "inverse_sigmoid", "--sampling-k", "inf"],
            ["--sampling-k", "positive number, got inf"],
        ),
        (
            ["--sampling", "exponential", "--sampling-k", "2"],
            ["--sampling exponential --sampling-k 2", "0 < k < 1"],
        ),
    ],
)
@pytest.mark.parametrize("task", ["forecast", "seq2seq"])
def test_bad_sampling_flags_are_usage_errors_before_anything_runs(
    cli, tmp_path, series_csv, task, flags, fragments
):
    """A bad --sampling-min or --sampling-k was an error naming neither ('end must be in [0, 1]'),
    after the data and model were built and printed; an infinite inverse_sigmoid k trained on NaN
    probabilities of feeding the truth without a word."""
    argv = [*FORECAST, "--data", series_csv] if task == "forecast" else ["train", "seq2seq", "--n-train", 32]
    r = cli(*argv, *flags, "--out", tmp_path / "f", *TINY)
    assert_one_line_error(r, *fragments)
    assert r.rc == 2 and r.out == "" and not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    "task, kind, k", [("forecast", "inverse_sigmoid", 50.0), ("seq2seq", "exponential", 0.999)]
)
def test_run_json_records_the_k_the_schedule_used(cli, tmp_path, series_csv, task, kind, k):
    """Without --sampling-k, run.json's "train" stored "sampling_k": null (the task's default k was
    applied later), so a --resume given another k said "resuming with the run's --sampling-k None";
    the k the run used is stored (and restored)."""
    import json

    argv = [*FORECAST, "--data", series_csv] if task == "forecast" else ["train", "seq2seq", "--n-train", 32]
    out = tmp_path / "f"
    assert cli(*argv, "--sampling", kind, "--out", out, *TINY).rc == 0
    assert json.loads((out / "run.json").read_text())["train"]["sampling_k"] == k
    r = cli(*argv, "--sampling", kind, "--sampling-k", "0.5", "--out", out, "--resume", *TINY)
    assert r.rc == 0, r.err
    assert f"resuming with the run's --sampling-k {k} (command line's 0.5 ignored)" in r.out


@pytest.mark.parametrize("kind, k", [("inverse_sigmoid", 1000.0), ("exponential", 0.999)])
def test_resume_of_an_older_runs_null_k_restores_the_k_it_used(cli, tmp_path, kind, k):
    """The previous release stored "sampling_k": null without --sampling-k (its schedule's default
    applied): today's --resume of such a run said "resuming with the run's --sampling-k None" and
    kept the null in run.json. The null is the schedule's default k, restored and now recorded."""
    import json

    argv = ["train", "seq2seq", "--n-train", 32, "--sampling", kind, "--out", tmp_path, "--hidden", 8]
    assert cli(*argv, "--max-steps", 1, "--no-progress").rc == 0
    doc = json.loads((tmp_path / "run.json").read_text())
    doc["train"]["sampling_k"] = None  # as the previous release wrote it
    (tmp_path / "run.json").write_text(json.dumps(doc))
    r = cli(*argv, "--sampling-k", "0.5", "--max-steps", 2, "--no-progress", "--resume")
    assert r.rc == 0, r.err
    assert f"resuming with the run's --sampling-k {k} (command line's 0.5 ignored)" in r.out, r.out
    assert json.loads((tmp_path / "run.json").read_text())["train"]["sampling_k"] == k
    assert results(tmp_path)["step"] == 2


@pytest.mark.parametrize("kind", ["teacher", "linear"])
def test_resume_of_a_schedule_without_k_says_nothing_about_k(cli, tmp_path, kind):
    """teacher and linear have no k (run.json's "sampling_k" is null): a --resume given one said
    "resuming with the run's --sampling-k None (command line's 0.5 ignored)"."""
    argv = ["train", "seq2seq", "--n-train", 32, "--sampling", kind, "--out", tmp_path, "--hidden", 8]
    assert cli(*argv, "--max-steps", 1, "--no-progress").rc == 0
    r = cli(*argv, "--sampling-k", "0.5", "--max-steps", 2, "--no-progress", "--resume")
    assert r.rc == 0, r.err
    assert "sampling-k" not in r.out and "None" not in r.out, r.out
    assert results(tmp_path)["step"] == 2


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (
            ["--sampling", "teacher", "--sampling-k", "2"],
            ["--sampling-k", "--sampling teacher", "exponential"],
        ),
        (["--sampling", "linear", "--sampling-k", "2"], ["--sampling-k", "--sampling linear"]),
        (["--sampling", "exponential", "--sampling-steps", "5"], ["--sampling-steps", "linear"]),
        (
            ["--sampling", "inverse_sigmoid", "--sampling-min", "0.1"],
            ["--sampling-min", "linear, exponential"],
        ),
    ],
)
def test_a_sampling_flag_of_another_schedule_is_a_usage_error(cli, tmp_path, flags, fragments):
    """--sampling-k with teacher or linear, --sampling-steps with any schedule but linear,
    --sampling-min with teacher or inverse_sigmoid trained as if they had not been given."""
    r = cli("train", "seq2seq", "--n-train", 32, *flags, "--out", tmp_path / "f", *TINY)
    assert r.rc == 2
    assert_one_line_error(r, "does not apply to", *fragments)
    assert not (tmp_path / "f").exists()
