"""Every study end to end on a tiny grid: files written, table parses, resume skips runs."""

import json

import pytest

import rnnkit.study.runner as runner
from rnnkit.cli import main as rnnkit_main
from rnnkit.study import main, run_study
from rnnkit.study.music import KEYS
from rnnkit.study.report import parse_table
from rnnkit.study.studies import SeqModel

TINY_ARITH = {"digits": 2, "hidden": [8], "embed": 4, "batch": 8, "n_valid": 20, "n_test": 20, "n_evals": 2}


def tiny_music(path):
    return {"data": str(path), "batch": 2, "window": 8, "n_evals": 2}


def check_outputs(out, res, n_runs, archs):
    for name in ("runs.jsonl", "results.md", "boxplot.png", "study.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "boxplot.png").read_bytes()[:4] == b"\x89PNG"
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == n_runs
    rows = parse_table((out / "results.md").read_text())
    assert [r["architecture"] for r in rows] == archs
    assert all(int(r["runs"]) == n_runs // len(archs) for r in rows)
    assert res["steps"] == 3


def test_jozefowicz_end_to_end_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "j"
    archs = ["Tanh", "LSTM", "MUT1"]
    res = run_study("jozefowicz", out, steps=3, seeds=1, archs=archs, settings=TINY_ARITH, progress=False)
    check_outputs(out, res, 3, archs)
    rec = runner.read_records(out)[0]
    assert rec["steps"] == 3 and rec["hidden"] == 8 and 0 <= rec["metric"] <= 1
    assert rec["config"]["hidden"] == 8  # the width it was built with (was the architecture's default, 64)
    assert [c[1] for c in rec["curve"]] == [0, 1, 3]  # step 0, every steps // n_evals, the last at the end
    # Resume: the finished runs are skipped; a second trial is added to the same grid.
    calls = []
    real = runner.fit
    monkeypatch.setattr(runner, "fit", lambda st, spec, *a: calls.append(spec.key) or real(st, spec, *a))
    res2 = run_study("jozefowicz", out, seeds=2, progress=False)
    assert calls == ["Tanh#1", "LSTM#1", "MUT1#1"] and res2["skipped"] == 3 and len(res2["records"]) == 6
    # the hyperparameters of a trial are shared by every architecture
    by = {r["key"]: r["hparams"] for r in res2["records"]}
    assert by["Tanh#1"] == by["LSTM#1"] != by["LSTM#0"]
    # a run killed while its record was being written is run again, nothing else
    lines = (out / "runs.jsonl").read_text().splitlines()
    (out / "runs.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    calls.clear()
    run_study("jozefowicz", out, progress=False, report=False)
    assert calls == [json.loads(lines[-1])["key"]]
    with pytest.raises(ValueError, match="steps per run"):
        run_study("jozefowicz", out, steps=5)
    with pytest.raises(ValueError, match="holds study"):
        run_study("chung", out)


def test_resume_with_archs_keeps_the_stored_grid(tmp_path):
    """``--archs`` on a resume used to overwrite study.json's architecture list, so a later
    plain resume ran and reported only that subset."""
    out = tmp_path / "sub"
    kw = {"progress": False, "report": False}
    run_study("jozefowicz", out, steps=2, seeds=1, archs=["Tanh", "LSTM"], settings=TINY_ARITH, **kw)
    res = run_study("jozefowicz", out, archs=["LSTM"], **kw)  # the subset: run and reported alone
    assert [r["key"] for r in res["records"]] == ["LSTM#0"] and res["skipped"] == 1
    assert json.loads((out / "study.json").read_text())["archs"] == ["Tanh", "LSTM"]
    res = run_study("jozefowicz", out, archs=["GRU"], **kw)  # a new architecture joins the grid
    assert [r["key"] for r in res["records"]] == ["GRU#0"] and res["skipped"] == 0
    assert json.loads((out / "study.json").read_text())["archs"] == ["Tanh", "LSTM", "GRU"]
    res = run_study("jozefowicz", out, **kw)
    assert sorted(r["key"] for r in res["records"]) == ["GRU#0", "LSTM#0", "Tanh#0"] and res["skipped"] == 3


def test_resume_with_fewer_seeds_keeps_the_stored_count(tmp_path):
    """``--seeds`` smaller than the stored count on a resume used to overwrite study.json's
    count, so a later plain resume ran and reported only the first trials."""
    out = tmp_path / "few"
    kw = {"progress": False, "report": False}
    run_study("jozefowicz", out, steps=1, seeds=2, archs=["LSTM"], settings=TINY_ARITH, **kw)
    res = run_study("jozefowicz", out, seeds=1, **kw)  # the first trial: run and reported alone
    assert [r["key"] for r in res["records"]] == ["LSTM#0"] and res["skipped"] == 1
    assert json.loads((out / "study.json").read_text())["seeds"] == 2
    res = run_study("jozefowicz", out, **kw)
    assert [r["key"] for r in res["records"]] == ["LSTM#0", "LSTM#1"] and res["skipped"] == 2
    res = run_study("jozefowicz", out, seeds=3, **kw)  # more seeds extend the grid
    assert res["skipped"] == 2 and len(res["records"]) == 3
    assert json.loads((out / "study.json").read_text())["seeds"] == 3


def test_resume_keeps_the_budget_and_parallelism_its_steps_were_computed_for(tmp_path):
    """A resume wrote its own --budget-minutes and --workers into study.json: the record of what the
    (fixed) step count came from was lost, and another budget was accepted while changing nothing."""
    pytest.importorskip("rnnkit.diagnostics.memory")
    out = tmp_path / "b"
    kw = {"progress": False, "report": False}
    tiny = {"hidden_size": 4, "batch": 4, "lags": [2], "tasks": ["copy"], "steps": 3}  # 2 minutes: 1 step
    run_study("memory", out, seeds=1, archs=["LSTM"], settings=tiny, budget_minutes=2, **kw)
    with pytest.raises(ValueError, match="2-minute budget .*1 steps per run.*not 5"):
        run_study("memory", out, budget_minutes=5, **kw)
    res = run_study("memory", out, budget_minutes=2, workers=2, **kw)  # the same: fine
    assert res["skipped"] == 1
    meta = json.loads((out / "study.json").read_text())
    assert (meta["budget_minutes"], meta["parallel"], meta["steps"]) == (2, 1, 1)


def test_a_study_of_given_steps_stores_no_budget(tmp_path):
    """--steps stored the default 30-minute budget, which never counted: a resume with
    --budget-minutes was refused for differing from it. The budget is null now, and a resume
    with a budget is refused saying the steps were given (unless they are given again, as in
    the first run: then it is ignored again)."""
    out = tmp_path / "s"
    kw = {"archs": ["LSTM"], "progress": False, "report": False}
    run_study("jozefowicz", out, steps=1, seeds=1, settings=TINY_ARITH, budget_minutes=2, **kw)
    assert json.loads((out / "study.json").read_text())["budget_minutes"] is None
    with pytest.raises(ValueError, match="run with --steps 1 .no budget.*without --budget-minutes"):
        run_study("jozefowicz", out, budget_minutes=5, **kw)
    assert run_study("jozefowicz", out, steps=1, budget_minutes=2, **kw)["skipped"] == 1  # the same command
    assert run_study("jozefowicz", out, **kw)["skipped"] == 1
    assert json.loads((out / "study.json").read_text())["budget_minutes"] is None


@pytest.mark.parametrize(
    "name, archs", [("greff", ["V", "NFG", "NP", "CIFG"]), ("chung", ["Tanh", "GRU", "LSTM"])]
)
def test_music_studies_end_to_end(tmp_path, tiny_rolls, name, archs):
    out = tmp_path / name
    res = run_study(
        name, out, steps=3, seeds=1, archs=archs, settings=tiny_music(tiny_rolls[0]), progress=False
    )
    check_outputs(out, res, len(archs), archs)
    recs = res["records"]
    assert all(r["metric"] > 0 for r in recs)  # NLL in nats per frame
    if name == "chung":
        assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
        params = [r["params"] for r in recs]  # matched sizes: within a few percent of 20k
        assert max(params) / min(params) < 1.1 and abs(params[0] - 20000) < 1000
    # the record's config builds the model that ran: its hidden is the matched (chung) or drawn one
    for r in recs:
        assert r["config"]["hidden"] == r["hidden"]
        assert sum(p.numel() for p in SeqModel(r["config"], KEYS, KEYS).parameters()) == r["params"]


def test_a_resume_compares_the_data_file_not_its_spelling(tmp_path, tiny_rolls, monkeypatch):
    """``--set data=./rolls.npz`` on a study run with ``data=rolls.npz`` (one file) was refused:
    the settings were compared as strings. Paths are compared resolved; another file still refuses."""
    monkeypatch.chdir(tiny_rolls[0].parent)
    kw = {"steps": 1, "seeds": 1, "archs": ["V"], "progress": False, "report": False}
    run_study("greff", "out", settings=tiny_music("rolls.npz"), **kw)
    res = run_study("greff", "out", settings=tiny_music("./rolls.npz"), **kw)
    assert res["skipped"] == 1
    run_study("greff", "out", settings=tiny_music(str(tiny_rolls[0])), **kw)
    (tmp_path / "other.npz").write_bytes(tiny_rolls[0].read_bytes())
    with pytest.raises(ValueError, match="was run with settings"):
        run_study("greff", "out", settings=tiny_music("other.npz"), **kw)


@pytest.mark.parametrize("how", [{"steps": 1}, {"budget_minutes": 0.01}])
def test_a_params_past_matching_leaves_no_study_json(tmp_path, tiny_rolls, monkeypatch, how):
    """With --steps, a params no hidden size searched reaches failed only in the first run, after
    study.json was written with it: the corrected rerun in the same --out was then refused ("was run
    with settings ..."). It now fails before, as it did in budget mode (in calibration)."""
    from rnnkit.study import studies

    monkeypatch.setattr(studies, "MAX_MATCHED_HIDDEN", 16)  # the same search, small models
    kw = {"seeds": 1, "archs": ["Tanh"], "progress": False, "report": False, **how}
    with pytest.raises(ValueError, match=r"params=1000000: a rnn model has at most \d+ parameters"):
        run_study("chung", tmp_path / "o", settings={**tiny_music(tiny_rolls[0]), "params": 10**6}, **kw)
    assert not (tmp_path / "o" / "study.json").exists()
    res = run_study("chung", tmp_path / "o", settings={**tiny_music(tiny_rolls[0]), "params": 2000}, **kw)
    assert len(res["records"]) == 1 and res["records"][0]["hidden"] <= 16


def test_budget_calibration_and_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "jozefowicz",
        "--out",
        str(out),
        "--budget-minutes",
        "0.05",
        "--seeds",
        "1",
        "--archs",
        "LSTM",
        "--no-progress",
    ] + [f"--set={k}={v}" for k, v in {**TINY_ARITH, "min_steps": 2, "max_steps": 4}.items()]
    assert main(argv) == 0
    meta = json.loads((out / "study.json").read_text())
    assert meta["costs"]["LSTM"][0] > 0 and 2 <= meta["steps"] <= 4 and meta["settings"]["digits"] == 2
    assert "| LSTM | 1 |" in capsys.readouterr().out


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="no setting 'digitz'"):
        run_study("jozefowicz", tmp_path, settings={"digitz": 3})
    with pytest.raises(ValueError, match="no architecture 'LSTN'"):
        run_study("jozefowicz", tmp_path, archs=["LSTN"])
    with pytest.raises(ValueError, match="archs names no architecture"):  # it ran every architecture
        run_study("jozefowicz", tmp_path / "empty", archs=[], steps=1, seeds=1, settings=TINY_ARITH)
    assert not (tmp_path / "empty").exists()
    # one name as a bare string was taken letter by letter ("no architecture 'L'")
    with pytest.raises(TypeError, match=r"archs must be a sequence of names, got the string 'LSTM'"):
        run_study("jozefowicz", tmp_path, archs="LSTM")
    with pytest.raises(ValueError, match="unknown study"):
        run_study("nope", tmp_path)


@pytest.mark.parametrize("entry", ["rnnkit", "python -m"])
@pytest.mark.parametrize(
    "stored, args, msg, status",
    [
        # a bad flag value is a usage error (docs/cli.md, "Errors"); it exited with status 1
        (None, ["--archs", "LSTN"], "study 'jozefowicz' has no architecture 'LSTN'", 2),
        (None, ["--archs", "LSTM,"], "study 'jozefowicz' has no architecture ''", 2),
        # an empty one (--archs "$UNSET") ran every architecture
        (
            None,
            ["--archs", "", "--steps", "1", "--seeds", "1", "--set", "n_valid=2", "--set", "n_test=2"],
            "study 'jozefowicz' has no architecture ''",
            2,
        ),
        # a run that cannot resume is a failure at run time
        ({"study": "chung"}, [], "holds study 'chung', not 'jozefowicz'", 1),
        ({"study": "jozefowicz", "settings": {}, "steps": 3}, ["--steps", "5"], "3 steps per run, not 5", 1),
    ],
)
def test_user_errors_are_one_line_from_both_entry_points(tmp_path, capsys, entry, stored, args, msg, status):
    """``python -m rnnkit.study`` used to print a traceback where ``rnnkit study`` printed one line."""
    if stored is not None:
        (tmp_path / "study.json").write_text(json.dumps(stored))
    argv = ["jozefowicz", "--out", str(tmp_path), "--no-progress", *args]
    code = rnnkit_main(["study", *argv]) if entry == "rnnkit" else main(argv)
    err = capsys.readouterr().err
    assert code == status and err.startswith("rnnkit: error: ") and len(err.strip().splitlines()) == 1
    assert msg in err


@pytest.mark.parametrize("flag", ["seeds", "steps", "budget_minutes"])
def test_zero_or_negative_counts_are_errors(tmp_path, flag):
    """0 used to fall back to the study's default (3 seeds, 30 minutes) or train 0 steps."""
    kw = {"seeds": 1, "steps": 1, "budget_minutes": 1.0, flag: 0}
    for v in (0, -1):
        with pytest.raises(ValueError, match=f"{flag} must be positive, got {v}"):
            run_study("jozefowicz", tmp_path / "z", archs=["LSTM"], settings=TINY_ARITH, progress=False,
                      **{**kw, flag: v})  # fmt: skip
    assert main(["jozefowicz", "--out", str(tmp_path / "z"), f"--{flag.replace('_', '-')}=0"]) == 2
    assert not (tmp_path / "z").exists()


def test_memory_end_to_end(tmp_path):
    pytest.importorskip("rnnkit.diagnostics.memory")
    out = tmp_path / "memory"
    tiny = {"hidden_size": 4, "batch": 4, "lags": [2, 3], "tasks": ["copy", "plus_one"]}
    res = run_study("memory", out, steps=3, seeds=1, archs=["Tanh", "LSTM"], settings=tiny, progress=False)
    check_outputs(out, res, 2, ["Tanh", "LSTM"])
    for r in res["records"]:
        assert set(r["horizons"]) == {"copy", "plus_one"} and r["metric"] in (0, 1, 1.5, 2, 2.5, 3)
        assert r["metric"] == sum(r["horizons"].values()) / 2
        assert {row["lag"] for row in r["lags"]} <= {2, 3}
        assert r["config"]["hidden"] == r["hidden"] == 4  # hidden_size, not the architecture's default


def _strict(text):
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_study_json_is_strict_json_and_read_back(tmp_path, monkeypatch):
    """study.json took bare NaN tokens (a timing cost), invalid strict JSON, where runs.jsonl,
    metrics.jsonl and results.json are strict: a non-finite value is null, named in "nonfinite";
    the reader restores it (and reads older files with bare tokens)."""
    import rnnkit.study as study

    out = tmp_path / "j"
    monkeypatch.setattr(study, "calibrate", lambda *a: {"Tanh": [0.01, float("nan")]})
    monkeypatch.setattr(study, "steps_for_budget", lambda *a: 2)
    run_study("jozefowicz", out, seeds=1, archs=["Tanh"], settings=TINY_ARITH, progress=False)
    meta = _strict((out / "study.json").read_text())
    assert meta["costs"]["Tanh"] == [0.01, None] and meta["nonfinite"] == {"costs/Tanh/1": "nan"}
    res = run_study("jozefowicz", out, progress=False, report=False)  # the resume reads it back
    assert res["skipped"] == 1 and _strict((out / "study.json").read_text()) == meta
    runner.save_json(out / "x.json", {"costs": {"Tanh": [float("nan"), 0.5]}})
    assert _strict((out / "x.json").read_text())["nonfinite"] == {"costs/Tanh/0": "nan"}
    back = runner.read_json(out / "x.json")
    assert back["costs"]["Tanh"][1] == 0.5 and back["costs"]["Tanh"][0] != back["costs"]["Tanh"][0]
    (out / "old.json").write_text('{"costs": {"Tanh": [NaN, 0.5]}}')  # written before
    assert runner.read_json(out / "old.json")["costs"]["Tanh"][1] == 0.5
    (out / "cut.json").write_text('{"costs": {"Ta')
    with pytest.raises(ValueError, match="cut.json is not valid JSON"):
        runner.read_json(out / "cut.json")


def test_archs_may_have_spaces_around_the_commas(tmp_path, monkeypatch):
    """``--archs "LSTM, GRU"`` was refused (no architecture ' GRU'): the names are stripped."""
    import rnnkit.study

    seen = {}
    monkeypatch.setattr(rnnkit.study, "run_study", lambda *a, **kw: seen.update(kw) or {"rank": 1})
    assert main(["jozefowicz", "--out", str(tmp_path), "--archs", " Tanh, LSTM ,MUT1"]) == 0
    assert seen["archs"] == ["Tanh", "LSTM", "MUT1"]


def test_run_study_strips_the_architecture_names(tmp_path):
    """Only the CLI stripped --archs: the library call run_study(archs=[" LSTM "]) was refused
    (no architecture ' LSTM '), on a resume too."""
    out = tmp_path / "s"
    kw = {"progress": False, "report": False}
    res = run_study("jozefowicz", out, steps=1, seeds=1, archs=[" LSTM "], settings=TINY_ARITH, **kw)
    assert [r["key"] for r in res["records"]] == ["LSTM#0"]
    assert json.loads((out / "study.json").read_text())["archs"] == ["LSTM"]
    res = run_study("jozefowicz", out, archs=["LSTM\t"], **kw)
    assert [r["key"] for r in res["records"]] == ["LSTM#0"] and res["skipped"] == 1


def test_runs_without_study_json_are_not_adopted(tmp_path, capsys):
    """A directory with runs.jsonl but no study.json (deleted, or copied without it) had its runs
    taken as finished by key alone: runs of other steps and settings reported as this grid's."""
    out = tmp_path / "j"
    run_study("jozefowicz", out, steps=2, seeds=1, archs=["LSTM"], settings=TINY_ARITH, progress=False)
    (out / "study.json").unlink()
    before = (out / "runs.jsonl").read_text()
    with pytest.raises(ValueError, match="holds finished runs .* but no study.json"):
        run_study("jozefowicz", out, steps=3, seeds=1, archs=["LSTM"], settings=TINY_ARITH, progress=False)
    assert (out / "runs.jsonl").read_text() == before and not (out / "study.json").exists()
    assert main(["jozefowicz", "--steps", "2", "--archs", "LSTM", "--out", str(out)]) == 1
    assert "no study.json" in capsys.readouterr().err


def test_an_out_that_is_a_file_is_an_error_naming_the_flag(tmp_path, capsys):
    """It was mkdir's "[Errno 17] File exists", naming no flag; then a run-time failure (exit 1),
    now a usage error (exit 2), as ``rnnkit diagnose``'s and ``rnnkit train``'s."""
    (tmp_path / "f").write_text("x")
    assert main(["jozefowicz", "--steps", "1", "--out", str(tmp_path / "f")]) == 2
    assert f"--out {tmp_path / 'f'} is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "x"
    # inside a file: it was mkdir's "[Errno 20] Not a directory" (exit 1, no flag named)
    assert main(["jozefowicz", "--steps", "1", "--out", str(tmp_path / "f" / "sub")]) == 2
    assert f"--out {tmp_path / 'f' / 'sub'} is inside {tmp_path / 'f'}, a file" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--archs", "LSTN"], ["--steps", "1", "--archs", "LSTM"]])
def test_the_entry_point_leaves_torchs_thread_count_as_it_was(tmp_path, args):
    """``rnnkit.study.main`` (and ``rnnkit study`` called from Python) set ``torch.set_num_threads``
    for good: a notebook was left at ``--threads`` (default 1) threads, after an error too.
    The caller's count is back afterwards, as ``rnnkit diagnose`` leaves it."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        argv = ["jozefowicz", "--out", str(tmp_path), "--no-progress", "--threads", "1", *args]
        main(argv + [f"--set={k}={v}" for k, v in TINY_ARITH.items()])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
