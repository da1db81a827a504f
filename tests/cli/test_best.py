"""Early stopping and the best weights from the command line: ``--patience``, ``--save-best``,
the run's ``best/`` used by ``sample``/``eval``/``predict``/``diagnose``, and ``--resume`` with them."""

from __future__ import annotations

import json
import shutil

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
    # (the metrics are of the last weights, which the summary did not say beside best/'s)
    last = "the metrics below (and results.json's) are of the last weights, step 7"
    assert lines[-3] == f"best weights: {out / 'best'}/ (step 4, valid_loss 1.5000); {last}", r.out
    why = "3 validations without a new best (--patience 3)"  # (the stop line named no cause)
    assert lines[-2].startswith(f"stopped (early_stopping) after 7 steps, {why}: valid_loss 1.7000"), r.out
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


def test_predict_best_uses_the_best_weights(cli, tmp_path, text_csv, monkeypatch):
    out = tmp_path / "c"
    _validations(monkeypatch, 1.0, 2.0, 3.0)  # the best is step 1's, the last step 3's
    args = ["--data", text_csv, "--out", out, "--val-every", 1, "--save-best", *TINY]
    assert cli("train", "classify", *args).rc == 0
    run = json.loads((out / "run.json").read_text())
    best, step1, last = _classifier(run), _classifier(run), _classifier(run)
    load_model_weights(out, out, best, best=True)
    load_model_weights(out / "checkpoints" / "step-000000001", out, step1)
    load_model_weights(out, out, last)
    assert all(torch.equal(a, b) for a, b in zip(best.parameters(), step1.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(best.parameters(), last.parameters(), strict=True))
    texts = tmp_path / "texts.txt"
    texts.write_text("a great film\nan awful movie\n", encoding="utf-8")
    got = {}
    for how in (
        ["--checkpoint", out, "--best"],
        ["--checkpoint", out / "best"],
        ["--checkpoint", out / "best", "--best"],
    ):
        r = cli("predict", *how, "--input", texts)
        assert r.rc == 0, r.err
        got[str(how)] = r.out
    assert len(set(got.values())) == 1, got


def test_sample_and_eval_best(cli, tmp_path, text_file, monkeypatch):
    out = tmp_path / "lm"
    _validations(monkeypatch, 1.0, 2.0, 3.0)
    train = ["--data", text_file, "--seq-len", 20, "--batch-size", 4, "--amp", "off", "--val-every", 1]
    assert cli("train", "charlm", *train, "--out", out, "--save-best", *TINY).rc == 0
    assert _best_step(out) == 1
    for cmd in (["sample", "--seed", 0, "--length", 40], ["eval", "--data", text_file]):
        step1 = out / "checkpoints" / "step-000000001"
        outs = {cli(*cmd, "--checkpoint", where, *best).out for where, best in
                ((out, ["--best"]), (out / "best", []), (step1, []))}  # fmt: skip
        assert len(outs) == 1 and "" not in outs, outs


def test_best_without_best_weights_or_with_a_checkpoint_is_an_error(cli, tmp_path, text_csv):
    out = tmp_path / "c"
    assert cli("train", "classify", "--data", text_csv, "--out", out, *TINY).rc == 0
    texts = tmp_path / "t.txt"
    texts.write_text("a great film\n", encoding="utf-8")
    r = cli("predict", "--checkpoint", out, "--best", "--input", texts)
    assert r.rc == 1 and r.out == ""
    assert_one_line_error(r, f"--best: no best weights in {out / 'best'}", "trained without --save-best")
    step = out / "checkpoints" / "step-000000003"
    r = cli("predict", "--checkpoint", step, "--best", "--input", texts)
    assert r.rc == 2 and r.out == ""
    assert_one_line_error(r, "--best loads the run's best/ weights", f"not {step}")


def test_best_error_says_which_reason_applies(cli, tmp_path, text_csv, monkeypatch):
    """``--best`` without best/ hedged "trained without --save-best, or no validation was a new
    best yet" although run.json records whether the run had --save-best: it says the one that applies."""
    out = tmp_path / "c"
    _validations(monkeypatch, 1.0, 2.0, 3.0)
    args = ["--data", text_csv, "--out", out, "--val-every", 1, *TINY]
    assert cli("train", "classify", *args).rc == 0
    texts = tmp_path / "t.txt"
    texts.write_text("a great film\n", encoding="utf-8")
    r = cli("predict", "--checkpoint", out, "--best", "--input", texts)
    assert_one_line_error(
        r, f"--best: no best weights in {out / 'best'} (the run was trained without --save-best)"
    )
    assert "new best" not in r.err
    _validations(monkeypatch, 5.0)  # turned on by a resume, no better than the run's best (1.0)
    assert cli("train", "classify", *args, "--max-steps", 4, "--resume", "--save-best").rc == 0
    r = cli("predict", "--checkpoint", out, "--best", "--input", texts)
    assert_one_line_error(
        r, f"--best: no best weights in {out / 'best'} (the run has --save-best, but no validation"
    )
    assert "trained without" not in r.err


def test_diagnose_takes_the_best_root(tmp_path):
    """``rnnkit diagnose --checkpoint RUN/best`` finds the run's run.json and the best's weights."""
    from rnnkit.diagnostics.checkpoint import find_run, weights_file

    model = torch.nn.LSTM(3, 5)
    (tmp_path / "run.json").write_text(json.dumps({"task": "memory", "model": {"arch": {"cell": "lstm"}}}))
    save_checkpoint(tmp_path / "checkpoints", model, step=9)
    save_checkpoint(tmp_path / "best", model, step=4, keep_last=1)
    assert weights_file(tmp_path / "best") == tmp_path / "best" / "step-000000004" / "model.safetensors"
    assert find_run(tmp_path / "best")["task"] == "memory"


def test_diagnose_takes_the_latest_pointer_file(tmp_path):
    """``diagnose --checkpoint RUN/checkpoints/latest`` read the pointer file as safetensors: a
    SafetensorError 'header too large'. It means the step the pointer names."""
    from rnnkit.diagnostics.checkpoint import find_run, weights_file

    model = torch.nn.LSTM(3, 5)
    (tmp_path / "run.json").write_text(json.dumps({"task": "memory", "model": {"arch": {"cell": "lstm"}}}))
    for step in (4, 9):
        save_checkpoint(tmp_path / "checkpoints", model, step=step)
    (tmp_path / "checkpoints" / "latest").write_text("step-000000004\n")
    found = weights_file(tmp_path / "checkpoints" / "latest")
    assert found == tmp_path / "checkpoints" / "step-000000004" / "model.safetensors"
    assert find_run(tmp_path / "checkpoints" / "latest")["task"] == "memory"


def test_diagnose_of_a_missing_best_says_it_does_not_exist(cli, tmp_path):
    """``diagnose --checkpoint RUN/best`` on a run without best/ said "no model.safetensors found at
    RUN/best", as if the directory were there without weights: it says the path does not exist,
    and where best/ comes from."""
    from rnnkit.diagnostics.checkpoint import weights_file

    out = tmp_path / "r"
    assert cli(*MEM, "--out", out, "--max-steps", 2).rc == 0
    r = cli("diagnose", "--checkpoint", out / "best", "--quick", "--no-horizon", "--out", tmp_path / "d")
    assert r.rc == 1
    assert_one_line_error(
        r, f"{out / 'best'} does not exist (a run's best/ comes from rnnkit train --save-best)"
    )
    with pytest.raises(FileNotFoundError, match="no/such does not exist$"):
        weights_file("no/such")
    (out / "empty").mkdir()  # there, but without weights: as before
    with pytest.raises(FileNotFoundError, match="no model.safetensors found at"):
        weights_file(out / "empty")


def test_a_new_run_without_save_best_drops_an_earlier_runs_best(cli, tmp_path, text_csv, monkeypatch):
    """A new run in an --out that holds only an earlier run's best/ (its checkpoints/ gone: killed before
    its first, or deleted) is allowed; without --save-best it left that best/, and `predict --best`
    then loaded the earlier run's weights into the new run's model."""
    out = tmp_path / "c"
    _validations(monkeypatch, 1.0, 2.0, 3.0)
    args = ["--data", text_csv, "--out", out, "--val-every", 1, *TINY]
    assert cli("train", "classify", *args, "--save-best").rc == 0 and (out / "best").is_dir()
    shutil.rmtree(out / "checkpoints")
    _validations(monkeypatch, 1.0, 2.0, 3.0)
    assert cli("train", "classify", *args).rc == 0
    assert not (out / "best").exists() and not list(out.glob(".old-*"))
    texts = tmp_path / "t.txt"
    texts.write_text("a great film\n", encoding="utf-8")
    r = cli("predict", "--checkpoint", out, "--best", "--input", texts)
    assert r.rc == 1 and r.out == ""
    assert_one_line_error(r, f"--best: no best weights in {out / 'best'}", "trained without --save-best")


def test_the_final_validation_counts_toward_the_best_and_patience(cli, tmp_path, monkeypatch):
    """The validation at the last step (it had none) is one the run reports (``valid_loss``): it
    did not count, so results.json showed a valid_loss better than best_valid_loss and ``--best``
    loaded weights worse than the last ones. A resume of the finished run does not validate again."""
    out = tmp_path / "r"
    _validations(monkeypatch, 2.0, 1.0)  # step 2 (--val-every 2), then the final one at step 3
    args = [*MEM[:-1], 2, "--out", out, "--max-steps", 3, "--save-best", "--patience", 1]
    r = cli(*args)
    assert r.rc == 0, r.err
    got = results(out)
    assert (got["valid_loss"], got["best_valid_loss"], got["best_step"]) == (1.0, 1.0, 3)
    assert _best_step(out) == 3 and f"best weights: {out / 'best'}/ (step 3, valid_loss 1.0000)\n" in r.out
    before = (out / "results.json").read_text(), (out / "metrics.jsonl").read_text()
    _validations(monkeypatch)  # none left: a validation raises StopIteration
    r = cli(*args, "--resume")
    assert r.rc == 0, r.err
    assert ((out / "results.json").read_text(), (out / "metrics.jsonl").read_text()) == before
    _validations(monkeypatch, 0.5, 0.9)  # step 4 a new best; the final one at step 5 none: patience 1 spent
    assert cli(*args[:-4], 5, "--save-best", "--resume").rc == 0
    got = results(out)
    assert (got["best_step"], got["step"], got["stop_reason"]) == (4, 5, "max_steps")
    r = cli(*args[:-4], 9, "--save-best", "--resume")
    assert "stopped early: 1 validations without a new best, --patience 1: nothing to train" in r.out, r.out


def test_patience_given_to_a_resume_of_a_run_without_it_says_so(cli, tmp_path, monkeypatch):
    """A --patience given to a resume replaced the run's with a line saying so, but not when the
    run had none: early stopping came on silently, counting the run's validations since its best
    (here it stops at once: nothing to train)."""
    out = tmp_path / "r"
    _validations(monkeypatch, 1.0, 2.0, 3.0)
    assert cli(*MEM, "--out", out, "--max-steps", 3).rc == 0
    r = cli(*MEM, "--out", out, "--max-steps", 20, "--resume", "--patience", 2)
    assert r.rc == 0, r.err
    assert "resuming with --patience 2, which the run had off: its validations since its best count" in r.out
    assert "stopped early: 2 validations without a new best, --patience 2: nothing to train" in r.out
    assert results(out)["step"] == 3 and results(out)["stop_reason"] == "early_stopping"
    assert json.loads((out / "run.json").read_text())["train"]["patience"] == 2


def test_resume_keeps_the_runs_validation_cadence(cli, tmp_path, monkeypatch):
    """--resume restored the run's --patience but not the --val-every it counts in: a resume
    without it validated at epoch ends only (charlm: every 250 steps), early stopping came later
    or never, and without validations no checkpoint was written until the end (a killed resume lost
    it all). The run's --val-every and --checkpoint-every are restored now; one given is used,
    with a line saying so."""
    small = [*MEM, "--batch-size", 8, "--patience", 2, "--save-best"]  # 4 steps an epoch
    _validations(monkeypatch, 3.0, 2.0, 2.5, 1.5, 1.8, 1.6, 1.7)
    assert cli(*small, "--out", tmp_path / "ref", "--max-steps", 20).rc == 0
    assert results(tmp_path / "ref")["step"] == 6
    out = tmp_path / "r"
    _validations(monkeypatch, 3.0, 2.0, 2.5, 1.5, 1.8, 1.6, 1.7)
    assert cli(*small, "--out", out, "--max-steps", 3).rc == 0
    r = cli(*MEM[:-2], "--out", out, "--max-steps", 20, "--resume")  # no --val-every
    assert r.rc == 0, r.err
    assert results(out) == results(tmp_path / "ref")
    assert [int(p.name[5:]) for p in sorted((out / "checkpoints").glob("step-*"))][-2:] == [5, 6]
    assert _best_step(out) == 4
    run = json.loads((out / "run.json").read_text())["train"]
    assert run["val_every"] == 1 and run["checkpoint_every"] is None
    _validations(monkeypatch, 1.0, 0.9)
    r = cli(*MEM[:-2], "--val-every", 2, "--out", out, "--max-steps", 10, "--resume", "--patience", 9)
    assert r.rc == 0, r.err
    assert "resuming with --val-every 2 (the run's was 1)" in r.out, r.out
    assert [row["step"] for row in _val_rows(out)][-2:] == [8, 10]


def _val_rows(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["split"] == "val"]


def test_best_error_says_best_was_removed_when_results_name_its_step(cli, tmp_path, text_csv, monkeypatch):
    """A ``best/`` deleted by hand after the run said "no validation with it on was a new best yet",
    although results.json records the best step: it says best/ was removed since."""
    import shutil

    out = tmp_path / "c"
    _validations(monkeypatch, 2.0, 1.0, 3.0)
    args = ["--data", text_csv, "--out", out, "--val-every", 1, "--save-best", *TINY]
    assert cli("train", "classify", *args).rc == 0
    shutil.rmtree(out / "best")
    texts = tmp_path / "t.txt"
    texts.write_text("a great film\n", encoding="utf-8")
    r = cli("predict", "--checkpoint", out, "--best", "--input", texts)
    why = "results.json records best weights of step 2, removed since"
    assert_one_line_error(r, f"--best: no best weights in {out / 'best'} ({why})")


def test_checkpoint_naming_the_latest_pointer_file_loads_the_step_it_names(cli, tmp_path, text_csv):
    """``--checkpoint RUN/checkpoints/latest`` (the pointer file) failed with 'no checkpoint in
    .../latest': it loads the step the pointer names, as ``RUN/checkpoints`` does."""
    out = tmp_path / "c"
    assert cli("train", "classify", "--data", text_csv, "--out", out, "--checkpoint-every", 1, *TINY).rc == 0
    ckpts = out / "checkpoints"
    (ckpts / "latest").write_text("step-000000002\n")  # not the highest step: the one named is loaded
    model = _classifier(json.loads((out / "run.json").read_text()))
    assert load_model_weights(ckpts / "latest", out, model)["step"] == 2
    texts = tmp_path / "t.txt"
    texts.write_text("a great film\n", encoding="utf-8")
    outs = {cli("predict", "--checkpoint", where, "--input", texts).out for where in
            (ckpts / "latest", ckpts / "step-000000002")}  # fmt: skip
    assert len(outs) == 1 and "" not in outs, outs


def test_diagnose_of_a_checkpoints_other_file_names_it(cli, tmp_path):
    """``diagnose --checkpoint STEP/state.json`` (or any file not .safetensors) went to safetensors
    unchecked: a traceback, 'header too large'. One line names the file, what was expected, and the
    checkpoint's own weights file."""
    from rnnkit.diagnostics.checkpoint import weights_file

    model = torch.nn.LSTM(3, 5)
    step = save_checkpoint(tmp_path / "checkpoints", model, step=2)
    with pytest.raises(ValueError, match=r"state.json is not a weights file: expected a .safetensors"):
        weights_file(step / "state.json")
    assert weights_file(step / "model.safetensors") == step / "model.safetensors"
    flags = ("--quick", "--no-horizon", "--out", tmp_path / "d")
    r = cli("diagnose", "--checkpoint", step / "state.json", *flags)
    assert r.rc == 1
    assert_one_line_error(r, f"{step / 'state.json'} is not a weights file", str(step / "model.safetensors"))


def test_diagnose_of_a_damaged_weights_file_names_it(cli, tmp_path):
    """A truncated ``model.safetensors`` gave safetensors' traceback ('invalid header length'),
    from the shape probe and from the loader alike; now one line names the file."""
    from rnnkit.diagnostics.checkpoint import load_weights

    step = save_checkpoint(tmp_path / "checkpoints", torch.nn.LSTM(3, 5), step=2)
    f = step / "model.safetensors"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        load_weights(torch.nn.LSTM(3, 5), f)
    r = cli("diagnose", "--checkpoint", f, "--cell", "lstm", "--hidden-size", "5", "--quick", "--no-horizon",
            "--out", tmp_path / "d")  # fmt: skip
    assert r.rc == 1
    assert_one_line_error(r, f"{f}: not a readable safetensors file")
