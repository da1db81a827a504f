"""run.json records a data file by its resolved path: ``--resume`` and ``predict`` find it and
tell it from another file of the same name from any working directory; older runs' records (a
base name, a relative path) stay readable."""

from __future__ import annotations

import json
import shutil

from tests.cli.conftest import TINY, assert_one_line_error, results

FORECAST = ["train", "forecast", "--column", "value", "--window", 8, "--horizon", 3, "--arima-order", "none"]


def _data(out) -> str:
    return json.loads((out / "run.json").read_text())["data"]


def test_forecast_records_the_resolved_path_and_resumes_from_another_directory(
    cli, tmp_path, series_csv, monkeypatch
):
    """The run recorded 'series.csv:value': a --resume from elsewhere could not tell the file
    from another series.csv (a different series was accepted), and predict could not find it."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir(), elsewhere.mkdir()
    shutil.copy(series_csv, home / "series.csv")
    out = tmp_path / "run"
    monkeypatch.chdir(home)
    assert cli(*FORECAST, "--data", "series.csv", "--out", out, *TINY).rc == 0
    assert _data(out) == f"{(home / 'series.csv').resolve()}:value"
    monkeypatch.chdir(elsewhere)
    r = cli(*FORECAST, "--data", "../home/series.csv", "--out", out, *TINY[:2], "--max-steps", 4, "--resume")
    assert r.rc == 0, r.err
    assert results(out)["step"] == 4
    (elsewhere / "series.csv").write_text("value\n" + "\n".join(str(t % 7) for t in range(120)) + "\n")
    r = cli(*FORECAST, "--data", "series.csv", "--out", out, *TINY[:2], "--max-steps", 5, "--resume")
    assert_one_line_error(r, "--resume", "was trained on", "pass the data flags of the original run")
    r = cli("predict", "--checkpoint", out)  # the run's own series, found from here
    want = cli("predict", "--checkpoint", out, "--input", home / "series.csv")
    assert r.rc == 0 and want.rc == 0 and r.out == want.out and r.out, r.err


def test_tag_and_classify_resume_from_another_directory(cli, tmp_path, conllu, text_csv, monkeypatch):
    """tag recorded the path as typed ('tiny.conllu'): a --resume from another directory, naming
    the same file otherwise, was refused; classify's base name accepted any tiny.csv."""
    for task, data in (("tag", conllu), ("classify", text_csv)):
        out = tmp_path / task
        monkeypatch.chdir(data.parent)
        assert cli("train", task, "--data", data.name, "--out", out, *TINY).rc == 0
        assert _data(out) == str(data.resolve())
        monkeypatch.chdir(tmp_path)
        r = cli("train", task, "--data", data, "--out", out, *TINY[:2], "--max-steps", 4, "--resume")
        assert r.rc == 0, r.err
        assert results(out)["step"] == 4


def test_older_runs_records_stay_readable(cli, tmp_path, series_csv, conllu, monkeypatch):
    """A base name (forecast, classify) or a path relative to the directory it was trained in
    (tag, charlm) still resumes with the same file named from anywhere."""
    out = tmp_path / "f"
    assert cli(*FORECAST, "--data", series_csv, "--out", out, *TINY).rc == 0
    doc = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**doc, "data": "series.csv:value"}))  # as it was
    r = cli(*FORECAST, "--data", series_csv, "--out", out, *TINY[:2], "--max-steps", 4, "--resume")
    assert r.rc == 0, r.err
    assert_one_line_error(cli("predict", "--checkpoint", out), "pass --input FILE.csv --column NAME")
    out = tmp_path / "t"
    assert cli("train", "tag", "--data", conllu, "--out", out, *TINY).rc == 0
    doc = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**doc, "data": f"{conllu.parent.name}/{conllu.name}"}))
    monkeypatch.chdir(tmp_path)
    r = cli("train", "tag", "--data", conllu, "--out", out, *TINY[:2], "--max-steps", 4, "--resume")
    assert r.rc == 0, r.err


def test_an_older_runs_absolute_record_through_a_symlink_resumes(cli, tmp_path, conllu):
    """tag recorded an absolute --data as typed: a path through a symlink (macOS's /tmp, a linked
    home) is not the resolved record of the resume's same --data, and was refused as other data."""
    link = tmp_path / "link"
    link.symlink_to(conllu.parent, target_is_directory=True)
    typed = link / conllu.name
    out = tmp_path / "t"
    assert cli("train", "tag", "--data", typed, "--out", out, *TINY).rc == 0
    doc = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**doc, "data": str(typed)}))  # as the last release did
    r = cli("train", "tag", "--data", typed, "--out", out, *TINY[:2], "--max-steps", 4, "--resume")
    assert r.rc == 0, r.err
    assert results(out)["step"] == 4
