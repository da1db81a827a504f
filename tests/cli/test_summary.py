"""What every ``rnnkit train`` task prints at its end: one form, and every file it wrote."""

from __future__ import annotations

import pytest

from tests.cli.conftest import TINY

TASKS = {
    "memory": ["--task", "copy", "--length", 5, "--n-copy", 2, "--n-train", 32, "--n-valid", 8],
    "forecast": ["--column", "value", "--window", 8, "--horizon", 3, "--arima-order", "none"],
    "classify": ["--data", "anyplus1", "--n", 64, "--length", 8],
    "tag": [],
    "seq2seq": ["--n-train", 32, "--n-valid", 8],
    "charlm": ["--seq-len", 20, "--batch-size", 4, "--amp", "off"],
}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_ends_with_what_it_wrote(cli, tmp_path, task, series_csv, conllu, text_file):
    """The "wrote" line left out files the run wrote (run.json, metrics.csv, forecast's
    forecast.png), and the memory task printed its settings and baseline as raw dicts."""
    data = {"forecast": series_csv, "tag": conllu, "charlm": text_file}.get(task)
    out = tmp_path / "run"
    r = cli("train", task, *(["--data", data] if data else []), *TASKS[task], "--out", out, *TINY)
    assert r.rc == 0, r.err
    lines = r.out.strip().splitlines()
    assert not [x for x in lines if "{" in x or "}" in x], r.out  # no raw dicts
    assert lines[0].startswith("data ") and lines[1].startswith("model "), r.out
    stopped, wrote = lines[-2:]
    assert stopped.startswith("stopped (max_steps) after 3 steps: valid_loss "), stopped
    prefix = f"wrote {out}/ ("
    assert wrote.startswith(prefix) and wrote.endswith(")"), wrote
    listed = wrote[len(prefix) : -1].split(", ")
    present = sorted(
        p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if not p.name.startswith(".")
    )
    assert sorted(listed) == present, (listed, present)
    assert listed[0] == "run.json" and ("forecast.png" in listed) == (task == "forecast")
