import json
import math
import sys

import numpy as np
import pytest

from rnnkit.study import report, runner
from rnnkit.study.studies import get_study

SPACE = {"lr": ("log", 1e-4, 1e-1), "hidden": ("choice", [8, 16, 32]), "p": ("uniform", 0.0, 0.5)}


def test_hparams_depend_on_the_trial_only():
    draws = [runner.sample_hparams(SPACE, k) for k in range(200)]
    assert draws[3] == runner.sample_hparams(dict(reversed(list(SPACE.items()))), 3)
    assert draws[3] != draws[4]
    lr = np.array([d["lr"] for d in draws])
    assert lr.min() >= 1e-4 and lr.max() <= 1e-1
    assert 0.3 < np.mean(lr < 1e-2) < 0.9  # log-uniform: 2/3 of the mass below 1e-2
    assert {d["hidden"] for d in draws} == {8, 16, 32}
    assert all(0 <= d["p"] <= 0.5 for d in draws)
    with pytest.raises(ValueError, match="kind must be"):
        runner.sample_hparams({"x": ("normal", 0, 1)}, 0)


def test_steps_for_budget():
    costs = {"a": [0.01, 0.5], "b": [0.03, 0.5]}  # seconds per step, per evaluation
    # 2 trials: per grid step 2 * 0.04 s; evaluations 2 * (10 + 2) * 1.0 s = 24 s
    steps = runner.steps_for_budget(costs, 2, 600, 1, 10, 1, 10**6)
    assert steps == int((0.9 * 600 - 24) / 0.08)
    assert runner.steps_for_budget(costs, 2, 600, 2, 10, 1, 10**6) > 2 * steps
    assert runner.steps_for_budget(costs, 2, 1, 1, 10, 7, 10**6) == 7
    assert runner.steps_for_budget(costs, 2, 10**6, 1, 10, 7, 100) == 100


def test_the_budget_counts_the_test_at_its_own_cost():
    """Calibration timed a validation only, and the budget counted the test (Arith's: 2000
    problems against 500) at that cost: the grid ran past its budget. It times the test too, and a
    run's evaluations cost ``n_evals + 1`` validations and one test."""
    evaluated: list[str] = []
    costs = runner.calibrate(_counting_study(evaluated), {}, [runner.Arch("A", {})], probe=1)
    assert evaluated == ["valid", "test"] and len(costs["A"]) == 3
    costs = {"a": [0.01, 0.5, 2.0], "b": [0.03, 0.5, 2.0]}
    # 2 trials: evaluations 2 * ((10 + 1) * 1.0 + 4.0) s = 30 s
    assert runner.steps_for_budget(costs, 2, 600, 1, 10, 1, 10**6) == int((0.9 * 600 - 30) / 0.08)


def _counting_study(evaluated):
    """A generic study with a one-weight model that records every evaluation's split."""
    import torch

    def evaluate(model, data, split):
        evaluated.append(split)
        return float(len(evaluated))

    return runner.Study("count", "", [runner.Arch("A", {})], {}, lambda s: {}, "m", True,
                        build=lambda spec, data: torch.nn.Linear(1, 1),
                        loss=lambda model, data, spec, rng: model(torch.ones(1, 1)).sum(),
                        evaluate=evaluate)  # fmt: skip


@pytest.mark.parametrize("steps, n_evals, want", [(20, 10, 10), (15, 10, 10), (25, 10, 10), (3, 10, 3),
                                                   (1, 10, 1), (7, 2, 2), (10000, 40, 40)])  # fmt: skip
def test_fit_validates_n_evals_times(steps, n_evals, want):
    """``steps`` not a multiple of ``n_evals`` used to validate every ``steps // n_evals``
    steps plus at the end: 15 steps, 10 evaluations asked, 15 done; 25 steps, 13 done (the
    budget estimate counts ``n_evals``)."""
    evaluated = []
    study = _counting_study(evaluated)
    spec = runner.Spec("count", study.archs[0], 0, {"lr": 1e-3}, {"n_evals": n_evals})
    res = runner.fit(study, spec, steps)
    assert evaluated == ["valid"] * (want + 1) + ["test"]  # step 0, want validations, the test
    at = [c[1] for c in res["curve"]]
    assert at[0] == 0 and at[-1] == steps and len(at) == want + 1 and at == sorted(set(at))
    if steps % n_evals == 0:  # the old spacing where it was right: every steps // n_evals
        assert at == list(range(0, steps + 1, steps // n_evals))
    # the greff benchmark's 10,881 steps: its validation points (none of its runs was best at the
    # dropped 10,880) are kept, so benchmarks/studies/greff reproduces
    assert runner.eval_steps(10881, 10) == {1088 * k for k in range(1, 10)} | {10881}


def test_records_survive_a_cut_line(tmp_path):
    runner.append_record(tmp_path / "runs.jsonl", {"key": "a#0", "metric": 1.0})
    with open(tmp_path / "runs.jsonl", "a") as f:
        f.write('{"key": "b#0", "met')  # killed while writing
    runner.append_record(tmp_path / "runs.rank1.jsonl", {"key": "c#0", "metric": float("nan")})
    recs = runner.read_records(tmp_path)
    assert [r["key"] for r in recs] == ["a#0", "c#0"] and math.isnan(recs[1]["metric"])


def _strict(line):
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def test_records_are_strict_json(tmp_path):
    """runs.jsonl had bare NaN tokens for a diverged run (jq and JavaScript refuse them); now a
    non-finite value is null, named in "nonfinite" by its path, as in metrics.jsonl, and
    read_records puts it back. Files with bare NaN (older rnnkit) still read."""
    nan, inf = float("nan"), float("inf")
    rec = {"key": "a#0", "metric": nan, "valid": -inf, "test": 0.5, "hparams": {"a/b~": inf},
           "curve": [[0.0, 0, 1.0], [0.1, 1, nan]], "stopped": "diverged"}  # fmt: skip
    runner.append_record(tmp_path / "runs.jsonl", rec)
    line = _strict((tmp_path / "runs.jsonl").read_text())
    assert line["metric"] is None and line["curve"][1][2] is None and line["hparams"] == {"a/b~": None}
    paths = {"metric": "nan", "valid": "-inf", "hparams/a~1b~0": "inf", "curve/1/2": "nan"}
    assert line["nonfinite"] == paths
    with open(tmp_path / "runs.rank1.jsonl", "w") as f:  # an older file: bare tokens
        f.write(json.dumps({"key": "b#0", "metric": nan, "curve": [[0.0, 1, inf]]}) + "\n")
    a, b = runner.read_records(tmp_path)
    assert math.isnan(a["metric"]) and a["valid"] == -inf and a["test"] == 0.5
    assert a["hparams"] == {"a/b~": inf}
    assert a["curve"][0] == [0.0, 0, 1.0] and math.isnan(a["curve"][1][2]) and "nonfinite" not in a
    assert math.isnan(b["metric"]) and b["curve"] == [[0.0, 1, inf]]


def test_a_record_appended_after_a_cut_line_is_read(tmp_path):
    """The run repeated after a kill is appended on a line of its own, not glued to the cut one
    (which made the resumed run's record unreadable too)."""
    path = tmp_path / "runs.jsonl"
    runner.append_record(path, {"key": "a#0", "metric": 1.0})
    with open(path, "a") as f:
        f.write('{"key": "b#0", "met')  # killed while writing
    runner.append_record(path, {"key": "b#0", "metric": 2.0})
    runner.append_record(path, {"key": "c#0", "metric": 3.0})
    assert [r["key"] for r in runner.read_records(tmp_path)] == ["a#0", "b#0", "c#0"]


def test_welch_p_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    a, b = [0.1, 0.3, 0.25, 0.2], [0.5, 0.45, 0.7]
    assert report.welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-12)
    assert math.isnan(report.welch_p([1.0], b))
    # the survival function itself, over Welch's real degrees of freedom and tails to 1e-200
    for df in (0.4, 1.0, 1.7, 2.0, 3.3, 9.5, 41.0, 1e3, 1e5):
        for t in (0.0, 0.01, 0.5, 1.96, 3.0, 10.0, 60.0, 1e3):
            want = 2 * stats.t.sf(t, df)
            assert report.student_t_two_sided(t, df) == pytest.approx(want, rel=1e-10, abs=1e-300), (t, df)


def test_student_t_outside_welchs_degrees_of_freedom():
    """df = inf gave NaN (inf / inf) instead of the normal's tail, df = 0 a p of 0.0 and df < 0 1.0
    or a ZeroDivisionError; NaN stays NaN, as in scipy."""
    for t in (0.0, 1.0, 1.96, -3.0, 40.0, math.inf):
        assert report.student_t_two_sided(t, math.inf) == pytest.approx(math.erfc(abs(t) / math.sqrt(2)))
    assert report.student_t_two_sided(1.96, math.inf) == pytest.approx(0.0499957902964, rel=1e-10)
    for df in (0.0, -1.0, -3.0, -math.inf):
        with pytest.raises(ValueError, match=f"df must be > 0, got {df}"):
            report.student_t_two_sided(1.0, df)
    assert math.isnan(report.student_t_two_sided(math.nan, 3.0))
    assert math.isnan(report.student_t_two_sided(1.0, math.nan))


def test_welch_p_needs_no_scipy(tmp_path, monkeypatch):
    """scipy is an optional package (the study extra): without it a study of 2+ seeds trained every
    run, then failed writing its report with a bare "No module named 'scipy'"."""
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy raises ImportError
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    # exact values: t = -sqrt(2) with df = 2 (P = 1 - |t| / sqrt(2 + t^2)) and t = 1 with df = 1 (Cauchy)
    assert report.welch_p([0.0, 2.0], [2.0, 4.0]) == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-13)
    assert report.student_t_two_sided(1.0, 1.0) == pytest.approx(0.5, rel=1e-13)
    study = get_study("jozefowicz")
    recs = [{"arch": a, "metric": m, "trial": k, "key": f"{a}#{k}"}
            for a, ms in (("LSTM", [0.8, 0.9]), ("Tanh", [0.1, 0.3])) for k, m in enumerate(ms)]  # fmt: skip
    report.write_report(study, recs, tmp_path, steps=3, trials=2)
    row = report.parse_table((tmp_path / "results.md").read_text())[0]
    assert row["architecture"] == "Tanh" and float(row["Welch p vs LSTM"]) < 0.1


def test_summary_table_round_trip():
    study = get_study("jozefowicz")
    recs = [
        {"arch": a, "metric": m, "trial": k}
        for k, (a, m) in enumerate(
            [("LSTM", 0.8), ("LSTM", 0.9), ("Tanh", 0.1), ("Tanh", 0.3), ("Tanh", float("nan"))]
        )
    ]
    rows = report.summarize(study, recs)
    assert [r["arch"] for r in rows] == ["Tanh", "LSTM"]  # the study's order, absent ones left out
    table = report.parse_table(report.markdown_table(study, rows))
    tanh = table[0]
    assert tanh["architecture"] == "Tanh" and tanh["runs"] == "2"  # the NaN run is left out
    assert tanh["accuracy mean ± std"] == f"0.200 ± {np.std([0.1, 0.3], ddof=1):.3f}"
    assert tanh["best"] == "0.300" and tanh["paper"] == "0.295"
    assert table[1]["Welch p vs LSTM"] == "—"
    with pytest.raises(ValueError, match="no Markdown table"):
        report.parse_table("no table here")
    json.dumps(rows)  # plain data


@pytest.mark.parametrize("name", ["jozefowicz", "greff", "chung", "memory"])
def test_every_architecture_builds_and_runs(name):
    import torch

    from rnnkit.study.studies import SeqModel

    study = get_study(name)
    for arch in study.archs:
        m = SeqModel({**arch.config, "hidden": 4}, 3, 2)
        assert m(torch.randn(5, 2, 3)).shape == (5, 2, 2), arch.name


def test_greff_variants_change_one_thing_of_the_peephole_lstm():
    from rnnkit.study.studies import SeqModel

    study = get_study("greff")
    names = {a.name: {n for n, _ in SeqModel({**a.config, "hidden": 4}, 3, 2).named_parameters()}
             for a in study.archs}  # fmt: skip
    rows = {a.name: SeqModel({**a.config, "hidden": 4}, 3, 2).rnn.weight_ih_l0.shape[0] for a in study.archs}
    assert any("peephole" in n for n in names["V"]) and not any("peephole" in n for n in names["NP"])
    assert all(
        any("peephole" in n for n in names[v]) for v in ("NIG", "NFG", "NOG", "NIAF", "NOAF", "CIFG", "FGR")
    )
    assert rows == {
        "V": 16,
        "NIG": 12,
        "NFG": 12,
        "NOG": 12,
        "NIAF": 16,
        "NOAF": 16,
        "NP": 16,
        "CIFG": 12,
        "FGR": 16,
    }


@pytest.mark.parametrize("hidden, want", [(8, 8), ([16], 16), (None, 64)])
def test_a_hidden_setting_sizes_the_model(hidden, want):
    """``--set hidden=8`` (one size) used to be ignored: every run had the table's 64 units."""
    from rnnkit.study import studies

    study = get_study("jozefowicz")
    s = {**study.settings, "hidden": hidden}
    spec = runner.Spec(study.name, study.archs[1], 0, runner.sample_hparams(study.space(s), 0), s)
    assert studies.arith_build(spec, None).rnn.hidden_size == want


def test_study_json_is_written_atomically_and_synced(tmp_path, monkeypatch):
    """save_json renamed an unsynced file over study.json (a crash could leave it empty, losing
    the study's settings): it goes through the writer of the CLI's run.json, file and directory fsynced."""
    import os

    synced = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or fsync(fd))
    runner.save_json(tmp_path / "study.json", {"steps": 3, "x": float("inf")})
    assert len(synced) >= 2  # the file before the rename, the directory after it
    assert runner.read_json(tmp_path / "study.json") == {"steps": 3, "x": float("inf")}
    assert [p.name for p in tmp_path.iterdir()] == ["study.json"]


def test_read_json_takes_a_str_path(tmp_path):
    """docs/study.md offers read_json to read study.json back, as read_results & co., which take a
    str; given one it failed with AttributeError ('str' object has no attribute 'read_text')."""
    runner.save_json(tmp_path / "study.json", {"steps": 3, "x": float("nan")})
    got = runner.read_json(str(tmp_path / "study.json"))
    assert got["steps"] == 3 and math.isnan(got["x"])


def test_report_names_an_architecture_whose_every_run_diverged(tmp_path):
    """An architecture with no finite result vanished from results.md: no table row (right), but
    the header counted architectures by rows ("× 1 architecture(s)" for two run) and nothing said
    which one was left out."""
    study = get_study("jozefowicz")
    diverged = {"arch": "Tanh", "metric": float("nan"), "trial": 0, "key": "Tanh#0", "stopped": "non-finite"}
    recs = [{"arch": "LSTM", "metric": 0.8, "trial": 0, "key": "LSTM#0"}, diverged]
    report.write_report(study, recs, tmp_path, steps=3, trials=1)
    text = (tmp_path / "results.md").read_text()
    assert "2 runs: 1 trial(s) × 2 architecture(s)" in text
    assert "No finite accuracy in any run (not in the table): Tanh." in text
    assert [r["architecture"] for r in report.parse_table(text)] == ["LSTM"]


def test_the_report_does_not_depend_on_the_order_runs_finished(tmp_path):
    """runs.jsonl holds the runs in the order they finished (--workers, torchrun ranks, a resume
    that adds trials): the box plot's jittered points, drawn in the records' order, and the list
    of runs stopped early came out otherwise for the same runs. Both follow the grid now."""
    study = get_study("jozefowicz")
    metrics = {"LSTM": [0.8, 0.9, 0.5], "Tanh": [0.1, 0.3, 0.15]}
    recs = [{"arch": a, "metric": m, "trial": k, "key": f"{a}#{k}", "stopped": "time" if m < 0.2 else None}
            for a, ms in metrics.items() for k, m in enumerate(ms)]  # fmt: skip
    finished = [recs[i] for i in (4, 2, 0, 5, 1, 3)]
    for d, rs in (("grid", recs), ("finished", finished)):
        (tmp_path / d).mkdir()
        report.write_report(study, rs, tmp_path / d, steps=3, trials=3)
    for name in ("results.md", "boxplot.png"):
        assert (tmp_path / "grid" / name).read_bytes() == (tmp_path / "finished" / name).read_bytes(), name


@pytest.mark.parametrize("how", [{"steps": 1}, {"budget_minutes": 0.01}])
def test_run_study_leaves_the_callers_rngs_as_they_were(tmp_path, monkeypatch, how):
    """Runs in this process (workers=1) and the budget's calibration call seed_everything: after
    run_study a caller's next draws were the last run's seed's, not those of its own seed (and
    PYTHONHASHSEED was set for its child processes); with workers > 1 only under a budget."""
    import os
    import random

    import torch

    from rnnkit.study import run_study

    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    tiny = {"digits": 2, "hidden": [8], "embed": 4, "batch": 8, "n_valid": 20, "n_test": 20, "n_evals": 2}

    def draws():
        return random.random(), float(np.random.random()), float(torch.rand(()))

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = draws()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    run_study("jozefowicz", tmp_path / "j", seeds=1, archs=["LSTM"], settings=tiny, progress=False,
              report=False, **how)  # fmt: skip
    assert draws() == expected
    assert "PYTHONHASHSEED" not in os.environ


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_parameter_matching_past_its_widest_size_is_an_error(monkeypatch, cell):
    """A params target above the widest hidden size searched (4096) silently got that size, a far
    smaller model (params=1e8: 17.5M for Tanh). It is an error naming the target, the most
    parameters reachable and the width; a reachable target still matches."""
    from rnnkit.study import studies

    monkeypatch.setattr(studies, "MAX_MATCHED_HIDDEN", 16)  # the same search, small models
    cfg = {"cell": cell, "hidden": 1, "layers": 1, "dropout": 0.0, "options": {}}
    most = studies.count_params({**cfg, "hidden": 16}, 5, 3)
    assert studies.matched_hidden(cfg, 5, 3, most) == 16
    assert studies.matched_hidden(cfg, 5, 3, studies.count_params({**cfg, "hidden": 7}, 5, 3)) == 7
    with pytest.raises(ValueError, match=rf"params={most + 1}: a {cell} model has at most {most} .*\(16\)"):
        studies.matched_hidden(cfg, 5, 3, most + 1)
