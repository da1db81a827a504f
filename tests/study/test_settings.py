"""``--set KEY=VALUE``: every key's value is checked before anything is written; a bad one is
one usage error (exit 2) naming the key, the expected form and the value."""

import pytest

from rnnkit.cli import main as rnnkit_main
from rnnkit.study import SettingError, main, run_study
from rnnkit.study.settings import FORMS, check_settings
from rnnkit.study.studies import STUDIES

BAD = [
    ("jozefowicz", "lr", 0.003, "a [lo, hi] range"),  # used to be a TypeError from the search space
    ("jozefowicz", "lr", [1e-2, 1e-3], "lo <= hi"),
    ("jozefowicz", "lr", [0, 1e-3], "two positive numbers"),
    ("jozefowicz", "lr", "fast", "a [lo, hi] range"),
    ("jozefowicz", "digits", 2.5, "a positive integer"),
    ("jozefowicz", "digits", True, "a positive integer"),
    ("jozefowicz", "hidden", "big", "a non-empty list of them"),
    ("jozefowicz", "hidden", [], "a non-empty list of them"),
    ("jozefowicz", "ops", "*", "'+' and '-'"),
    ("jozefowicz", "clip", "x", "a positive number"),
    # --set clip=1e999 is inf: it was taken (and an infinite learning rate drawn from lr)
    ("jozefowicz", "clip", float("inf"), "a positive number"),
    ("jozefowicz", "lr", [1e-3, float("inf")], "two positive numbers"),
    ("memory", "threshold", float("-inf"), "a number in (0, 1]"),
    ("greff", "window", [8], "a positive integer"),
    ("greff", "data", 3, "a path"),
    # a missing file used to fail in the first run, after study.json was written with it
    ("greff", "data", "/nonexistent/rolls.npz", "an existing .npz"),
    ("chung", "params", "20k", "an integer >= 0 or None"),
    ("memory", "lags", [10, 5], "increasing positive integers"),
    ("memory", "tasks", ["nope"], "memory tasks"),
    ("memory", "tasks", "copy", "memory tasks"),
    ("memory", "threshold", "high", "a number in (0, 1]"),
]


@pytest.mark.parametrize("study, key, value, form", BAD)
def test_a_bad_setting_is_an_error_naming_key_form_and_value(tmp_path, study, key, value, form):
    with pytest.raises(SettingError) as e:
        run_study(study, tmp_path / "out", steps=1, seeds=1, settings={key: value}, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"--set {key}: expected ") and form in msg and msg.endswith(f"got {value!r}")
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_every_setting_of_every_study_has_a_form_its_default_meets():
    for study in STUDIES.values():
        for k, v in study.settings.items():
            assert k in FORMS, (study.name, k)
            assert FORMS[k][1](v), (study.name, k, v)


def test_good_settings_pass():
    s = STUDIES["jozefowicz"].settings
    got = check_settings("jozefowicz", s, {"lr": (1e-3, 1e-3), "hidden": 32, "ops": "+", "clip": 2})
    assert got["lr"] == (1e-3, 1e-3) and got["hidden"] == 32 and got["digits"] == s["digits"]
    with pytest.raises(SettingError, match="no setting 'digitz'"):
        check_settings("jozefowicz", s, {"digitz": 3})


COUNTS = ["digits", "batch", "embed", "n_valid", "n_test", "n_evals", "min_steps", "max_steps"]
NOT_POSITIVE = [("jozefowicz", k, v, "a positive integer") for k in COUNTS for v in (0, -1)] + [
    ("jozefowicz", "hidden", 0, "a positive integer"),
    ("jozefowicz", "hidden", [64, 0], "a positive integer"),
    ("jozefowicz", "delay", -1, "an integer >= 0"),
    ("jozefowicz", "lr", [-1e-3, 1e-2], "two positive numbers"),
    ("jozefowicz", "clip", 0, "a positive number"),
    ("greff", "window", 0, "a positive integer"),
    ("greff", "quantum", 0.0, "a positive number"),
    ("greff", "max_chorales", -2, "an integer >= 0"),
    ("chung", "params", -5, "an integer >= 0 or None"),
    ("memory", "hidden_size", 0, "a positive integer"),
    ("memory", "steps", 0, "a positive integer"),
    ("memory", "batch", -4, "a positive integer"),
    ("memory", "lags", [0, 5], "increasing positive integers"),
    ("memory", "threshold", 0, "a number in (0, 1]"),
    ("memory", "threshold", 1.5, "a number in (0, 1]"),
]


@pytest.mark.parametrize("study, key, value, form", NOT_POSITIVE)
def test_non_positive_counts_are_errors(study, key, value, form):
    """``n_valid=0`` used to divide by zero after the first run's training (``n_evals=0``,
    ``batch=0`` and the other counts failed or misbehaved likewise)."""
    with pytest.raises(SettingError) as e:
        check_settings(study, STUDIES[study].settings, {key: value})
    assert str(e.value) == f"--set {key}: expected {FORMS[key][0]}, got {value!r}" and form in str(e.value)


def test_zero_n_valid_stops_the_cli(tmp_path, capsys):
    code = main(["jozefowicz", "--out", str(tmp_path / "o"), "--steps", "1", "--set", "n_valid=0"])
    err = capsys.readouterr().err
    assert code == 2 and "--set n_valid: expected a positive integer, got 0" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("digits", [19, 40])
def test_digits_past_int64_are_a_usage_error(tmp_path, capsys, digits):
    """Arith's operands are drawn as int64 (as ``rnnkit train memory --task arith --digits``, which
    refuses more than 18): ``--set digits=19`` passed the check and failed inside a run."""
    with pytest.raises(SettingError, match=rf"--set digits: expected .*at most 18.*got {digits}$"):
        check_settings("jozefowicz", STUDIES["jozefowicz"].settings, {"digits": digits})
    assert main(["jozefowicz", "--out", str(tmp_path / "o"), "--set", f"digits={digits}"]) == 2
    assert "at most 18" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert check_settings("jozefowicz", STUDIES["jozefowicz"].settings, {"digits": 18})["digits"] == 18


@pytest.mark.parametrize("entry", ["rnnkit", "python -m"])
def test_cli_a_bad_setting_is_a_one_line_usage_error(tmp_path, capsys, entry):
    argv = ["jozefowicz", "--out", str(tmp_path / "o"), "--steps", "1", "--set", "lr=0.003"]
    code = rnnkit_main(["study", *argv]) if entry == "rnnkit" else main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--set lr: expected a [lo, hi] range" in err and "got 0.003" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("over", [{"min_steps": 90, "max_steps": 50}, {"min_steps": 30000}, {"max_steps": 9}])
def test_min_steps_above_max_steps_is_an_error(tmp_path, capsys, over):
    """max_steps used to win silently (the budget's step count clamped to min, then max); the
    defaults are 50 and 20000."""
    with pytest.raises(SettingError, match=r"min_steps=\d+ exceeds max_steps=\d+"):
        check_settings("jozefowicz", STUDIES["jozefowicz"].settings, over)
    sets = [a for k, v in over.items() for a in ("--set", f"{k}={v}")]
    argv = ["jozefowicz", "--out", str(tmp_path / "o"), *sets]
    assert main(argv) == 2 and "exceeds max_steps" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    check_settings("jozefowicz", STUDIES["jozefowicz"].settings, {"min_steps": 50, "max_steps": 50})


@pytest.mark.parametrize("over", [{"hidden": 128}, {"hidden": [32, 64]}, {"hidden": 64, "params": 5000}])
def test_hidden_beside_parameter_matching_is_an_error(tmp_path, capsys, over):
    """chung matches every architecture's width to ``params``: a --set hidden was silently replaced
    by the matched size (and a searched one still recorded in the runs' hparams)."""
    s = STUDIES["chung"].settings
    with pytest.raises(SettingError, match=r"--set hidden=.* has no effect while params=\d+"):
        check_settings("chung", s, over)
    sets = [a for k, v in over.items() for a in ("--set", f"{k}={v}".replace(" ", ""))]
    assert main(["chung", "--out", str(tmp_path / "o"), "--steps", "1", *sets]) == 2
    assert "add --set params=0" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert check_settings("chung", s, {**over, "params": 0})["hidden"] == over["hidden"]
    assert check_settings("chung", s, {"params": 5000})["hidden"] is None


@pytest.mark.parametrize("entry", ["rnnkit", "python -m"])
def test_params_past_matching_is_a_usage_error_that_leaves_no_out(tmp_path, capsys, monkeypatch, entry):
    """``--set params`` above what the widest searched hidden size reaches exited with status 1 (a
    ValueError from parameter matching) where every other bad --set value is a usage error (2), and
    left the --out it had made (and its parents) behind, empty; a directory that was there stays."""
    from rnnkit.study import studies

    monkeypatch.setattr(studies, "MAX_MATCHED_HIDDEN", 16)  # the same search, small models
    for out in (tmp_path / "a" / "o", tmp_path / "kept"):
        argv = ["chung", "--out", str(out), "--steps", "1", "--archs", "Tanh", "--set", "params=1000000"]
        code = rnnkit_main(["study", *argv]) if entry == "rnnkit" else main(argv)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and "params=1000000: a rnn model" in err
        (tmp_path / "kept").mkdir(exist_ok=True)
    assert not (tmp_path / "a").exists() and list((tmp_path / "kept").iterdir()) == []


def test_study_help_lists_each_studys_architectures(tmp_path, capsys):
    """A bad --archs pointed to 'rnnkit study --help', which named none of the architectures."""
    assert rnnkit_main(["study", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name, study in STUDIES.items():
        assert f"{name}: {', '.join(a.name for a in study.archs)}" in text
    code = rnnkit_main(["study", "greff", "--archs", "foo", "--steps", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no architecture 'foo'" in err and "see rnnkit study --help" in err
