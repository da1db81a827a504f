"""Early stopping and the best weights from the command line: ``--patience``, ``--save-best``,
the run's ``best/`` used by ``sample``/``eval``/``predict``/``diagnose``, and ``--resume`` with them."""

from __future__ import annotations

import json

import pytest
import torch

from rnnkit.cli.common import load_model_weights
from rnnkit.tasks import classify as C
from rnnkit.train import save_checkpoint

from .conftest import TINY, assert_one_line_error, results


def _classifier(run: dict) -> torch.nn.Module:
    return C.classifier(run["model"]["arch"], len(run["classes"]), {k: v for k, v in run["model"].items()
                                                                    if k != "arch"})  # fmt: skip


def test_checkpoint_naming_the_best_root_loads_it(cli, tmp_path, text_csv):
    """``--checkpoint RUN/best`` (a checkpoint root, as ``RUN/checkpoints``) silently loaded the
    run's latest weights: only a ``step-*`` directory was taken as given."""
    out = tmp_path / "c"
    assert cli("train", "classify", "--data", text_csv, "--out", out, *TINY).rc == 0
    run = json.loads((out / "run.json").read_text())
    other = _classifier(run)
    with torch.no_grad():
        for p in other.parameters():
            p.fill_(0.25)
    save_checkpoint(out / "best", other, step=2, keep_last=1)
    for path, want in ((out / "best", 0.25), (out / "best" / "step-000000002", 0.25), (out, None)):
        model = _classifier(run)
        load_model_weights(path, out, model)
        got = {float(p.detach().flatten()[0]) for p in model.parameters()}
        assert (got == {want}) if want is not None else (got != {0.25}), (path, got)


MEM = ["train", "memory", "--task", "adding", "--length", 5, "--n-train", 32, "--n-valid", 8,
       "--hidden", 8, "--no-progress", "--val-every", 1]  # fmt: skip


def _validations(monkeypatch, *losses: float) -> None:
    """The trainer's validations return ``losses`` in turn (one per step with ``--val-every 1``)."""
    from rnnkit.train import Trainer

    scripted = iter(losses)
    monkeypatch.setattr(
        Trainer, "evaluate", lambda self, data: {"loss": next(scripted), "ppl": 1.0, "tokens": 1}
    )


def _best_step(out) -> int:
    from rnnkit.train import load_checkpoint

    return load_checkpoint(out / "best")["step"]


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "x"])
def test_bad_patience_is_a_usage_error(cli, tmp_path, value):
    r = cli(*MEM, "--out", tmp_path / "r", "--max-steps", 3, "--patience", value)
    assert r.rc == 2
    assert_one_line_error(r, "--patience", "expected a positive integer", value)
    assert not (tmp_path / "r").exists()


def test_patience_stops_early_and_save_best_keeps_the_best(cli, tmp_path, monkeypatch):
    out = tmp_path / "r"
    _validations(monkeypatch, 3.0, 2.0, 2.5, 1.5, 1.8, 1.6, 1.7)
    r = cli(*MEM, "--out", out, "--max-steps", 20, "--patience", 3, "--save-best")
    assert r.rc == 0, r.err
    assert results(out)["stop_reason"] == "early_stopping" and results(out)["step"] == 7
    assert _best_step(out) == 4
    lines = r.out.strip().splitlines()
    assert lines[-3] == f"best weights: {out / 'best'}/ (step 4, valid_loss 1.5000)", r.out
    assert lines[-2].startswith("stopped (early_stopping) after 7 steps: valid_loss 1.7000")
    assert lines[-1].startswith(f"wrote {out}/ (run.json, checkpoints/, best/, metrics.jsonl")
    assert (results(out)["best_valid_loss"], results(out)["best_step"]) == (1.5, 4)
    train = json.loads((out / "run.json").read_text())["train"]
    assert (train["patience"], train["save_best"]) == (3, True)  # what --resume restores


def test_without_the_flags_nothing_changes(cli, tmp_path, monkeypatch):
    out = tmp_path / "r"
    _validations(monkeypatch, 1.0, 2.0, 3.0, 4.0, 5.0)
    r = cli(*MEM, "--out", out, "--max-steps", 4)
    assert r.rc == 0 and "best" not in r.out, r.out
    assert results(out)["stop_reason"] == "max_steps" and not (out / "best").exists()
    assert "best_valid_loss" not in results(out)
    (out / "best").mkdir()  # an earlier run's, which a run without --save-best leaves alone
    r = cli(*MEM, "--out", out, "--max-steps", 5, "--resume")
    assert r.rc == 0 and "best" not in r.out, r.out


def test_resume_keeps_the_runs_patience_and_best_unless_given(cli, tmp_path, monkeypatch):
    """A resume without the flags goes on as the run would have: its patience, its best/ kept
    up to date; a given --patience replaces the run's (to go on after an early stop)."""
    out = tmp_path / "r"
    _validations(monkeypatch, 2.0, 1.0, 1.5)
    assert cli(*MEM, "--out", out, "--max-steps", 3, "--patience", 2, "--save-best").rc == 0
    assert _best_step(out) == 2
    _validations(monkeypatch, 0.5, 0.6, 0.7)  # steps 4 (a new best), 5, 6: the run's patience 2 stops it
    r = cli(*MEM, "--out", out, "--max-steps", 20, "--resume")
    assert r.rc == 0, r.err
    assert results(out)["stop_reason"] == "early_stopping" and results(out)["step"] == 6
    assert _best_step(out) == 4
    r = cli(*MEM, "--out", out, "--max-steps", 20, "--resume")  # its patience is spent
    assert r.rc == 0, r.err
    assert (
        "at step 6, stopped early: 2 validations without a new best, --patience 2: nothing to train" in r.out
    )
    assert results(out)["step"] == 6
    _validations(monkeypatch, 0.8, 0.9)
    r = cli(*MEM, "--out", out, "--max-steps", 20, "--resume", "--patience", 4)
    assert r.rc == 0, r.err
    assert "resuming with --patience 4 (the run's was 2)" in r.out
    assert results(out)["step"] == 8 and results(out)["stop_reason"] == "early_stopping"
    assert json.loads((out / "run.json").read_text())["train"]["patience"] == 4


def test_save_best_given_to_a_resume_starts_then(cli, tmp_path, monkeypatch):
    out = tmp_path / "r"
    _validations(monkeypatch, 2.0, 1.0)
    assert cli(*MEM, "--out", out, "--max-steps", 2).rc == 0
    _validations(monkeypatch, 1.5, 0.5)  # step 3 is no better than the run's best (1.0), step 4 is
    r = cli(*MEM, "--out", out, "--max-steps", 4, "--resume", "--save-best")
    assert r.rc == 0, r.err
    assert "resuming with --save-best, which the run had off" in r.out
    assert f"no best weights in {out / 'best'}/" not in r.out
    assert _best_step(out) == 4
    assert json.loads((out / "run.json").read_text())["train"]["save_best"] is True


def test_summary_says_when_no_validation_was_a_new_best(cli, tmp_path, monkeypatch):
    out = tmp_path / "r"
    _validations(monkeypatch, 2.0, 1.0)
    assert cli(*MEM, "--out", out, "--max-steps", 2).rc == 0
    _validations(monkeypatch, 1.5)
    r = cli(*MEM, "--out", out, "--max-steps", 3, "--resume", "--save-best")
    assert r.rc == 0, r.err
    msg = f"no best weights in {out / 'best'}/: no validation loss with --save-best on was better than the "
    assert msg + "run's best (1.0000)" in r.out, r.out
    assert "best_valid_loss" not in results(out)
