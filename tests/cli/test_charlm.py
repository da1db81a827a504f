"""``rnnkit train charlm`` / ``sample`` / ``eval`` end to end on a tiny text file."""

from __future__ import annotations

import json

import pytest

from tests.cli.conftest import assert_one_line_error, assert_run_files, results

pytest.importorskip("rnnkit.tasks.charlm", reason="rnnkit.tasks.charlm (branch charlm) is not merged yet")

LM = ["--hidden", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "4", "--embedding-dim", "8",
      "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory, text_file):
    from rnnkit.cli import main

    out = tmp_path_factory.mktemp("lm") / "run"
    assert (
        main(["train", "charlm", "--data", str(text_file), "--out", str(out), "--max-steps", "3", *LM]) == 0
    )
    return out


def test_train_writes_files_and_bits(trained):
    assert_run_files(trained)
    res = results(trained)
    assert res["valid_bits_per_char"] == pytest.approx(res["valid_nats_per_char"] / 0.6931471805599453)
    run = json.loads((trained / "run.json").read_text())
    assert run["task"] == "charlm" and len(run["vocab"]["chars"]) == run["model"]["vocab_size"]


def test_sample_is_deterministic_with_seed(cli, trained):
    a = cli("sample", "--checkpoint", trained, "--length", 50, "--seed", 3, "--prime", "to be")
    b = cli(
        "sample", "--checkpoint", trained / "checkpoints", "--length", 50, "--seed", 3, "--prime", "to be"
    )
    c = cli("sample", "--checkpoint", trained, "--length", 50, "--seed", 4, "--prime", "to be")
    assert a.rc == b.rc == c.rc == 0
    assert a.out == b.out and a.out.startswith("to be") and len(a.out) == len("to be") + 50 + 1
    assert a.out != c.out


def test_sample_bad_prime_and_length(cli, trained):
    assert_one_line_error(cli("sample", "--checkpoint", trained, "--prime", "ZQ#"), "vocabulary")
    assert_one_line_error(cli("sample", "--checkpoint", trained, "--length", -1), "--length")


def test_sample_bad_prime_leaves_stdout_empty(cli, trained):
    # the prime used to be echoed before the sampler found the unknown characters
    r = cli("sample", "--checkpoint", trained, "--prime", "ZQ#", "--length", 5)
    assert_one_line_error(r, "--prime", "vocabulary")
    assert r.out == ""
    r = cli("sample", "--checkpoint", trained, "--prime", "", "--length", 5)
    assert_one_line_error(r, "--prime")
    assert r.out == ""


def test_sample_tiny_temperature_is_greedy(cli, trained):
    # logits / 1e-300 overflowed to +-inf and softmax gave nan ("probability tensor contains ...")
    greedy = cli("sample", "--checkpoint", trained, "--prime", "to be", "--length", 30, "--temperature", 0)
    tiny = cli("sample", "--checkpoint", trained, "--prime", "to be", "--length", 30, "--temperature", 1e-300)
    assert greedy.rc == tiny.rc == 0, tiny.err
    assert tiny.out == greedy.out


@pytest.mark.parametrize("bad", ["nan", "inf", "1e999", "-1"])
def test_sample_a_nan_inf_or_negative_temperature_is_a_usage_error(cli, trained, bad):
    # inf (1e999 too) was accepted: the logits divided to 0, characters drawn uniformly
    r = cli("sample", "--checkpoint", trained, "--temperature", bad, "--length", 5)
    assert_one_line_error(r, "--temperature must be a finite number >= 0, got")
    assert r.rc == 2 and r.out == ""


def test_eval_counts_the_chars_it_scores(cli, trained, text_file, tmp_path):
    # 16 streams of 20 chars take 320 of 325: the 5 left over were counted but never scored
    text = text_file.read_text(encoding="utf-8")[:325]
    f = tmp_path / "part.txt"
    f.write_text(text, encoding="utf-8")
    r = cli("eval", "--checkpoint", trained, "--data", f, "--batch-size", 16, "--seq-len", 10)
    assert r.rc == 0, r.err
    assert r.out.startswith(f"{f}: 320 chars (the last 5 not scored: 16 streams of 20)"), r.out
    f.write_text(text[:320], encoding="utf-8")
    r = cli("eval", "--checkpoint", trained, "--data", f, "--batch-size", 16, "--seq-len", 10)
    assert r.out.startswith(f"{f}: 320 chars  "), r.out


def test_eval_prints_nats_and_bits(cli, trained, text_file, tmp_path):
    r = cli("eval", "--checkpoint", trained, "--data", text_file)
    assert r.rc == 0, r.err
    assert "nats/char" in r.out and "bits/char" in r.out
    other = tmp_path / "other.txt"
    other.write_text("XYZ not in the vocabulary", encoding="utf-8")
    assert_one_line_error(cli("eval", "--checkpoint", trained, "--data", other), "vocabulary")
    assert_one_line_error(cli("eval", "--checkpoint", trained, "--data", tmp_path / "none.txt"), "none.txt")


def test_resume_and_tcn(cli, tmp_path, text_file):
    out = tmp_path / "lm"
    assert cli("train", "charlm", "--data", text_file, "--out", out, "--max-steps", 2, *LM).rc == 0
    spelled = str(text_file.parent / ".." / text_file.parent.name / text_file.name)  # the same file
    r = cli("train", "charlm", "--data", spelled, "--out", out, "--max-steps", 4, "--resume", *LM)
    assert r.rc == 0, r.err
    assert results(out)["step"] == 4
    other = tmp_path / "other.txt"  # resuming on other data is refused, not silently mixed
    other.write_text(text_file.read_text(encoding="utf-8")[::-1], encoding="utf-8")
    r = cli("train", "charlm", "--data", other, "--out", out, "--max-steps", 6, "--resume", *LM)
    assert_one_line_error(r, "was trained on")
    assert results(out)["step"] == 4
    tcn = tmp_path / "tcn"
    r = cli("train", "charlm", "--data", text_file, "--out", tcn, "--max-steps", 2, "--arch", "tcn", *LM)
    assert r.rc == 0 and "receptive field" in r.out
    assert cli("sample", "--checkpoint", tcn, "--length", 10, "--seed", 0).rc == 0


def test_model_size_follows_the_budget_unless_given(cli, tmp_path, text_file):
    small = ["--layers", "1", "--seq-len", "16", "--batch-size", "4", "--embedding-dim", "8", "--no-progress"]

    def arch(out, *flags):
        r = cli("train", "charlm", "--data", text_file, "--out", out, "--max-steps", 1, *small, *flags)
        assert r.rc == 0, r.err
        return json.loads((out / "run.json").read_text())["model"]["arch"]

    a = arch(tmp_path / "short", "--max-minutes", 5)
    assert (a["hidden"], a["dropout"]) == (384, 0.0)
    a = arch(tmp_path / "long", "--max-minutes", 25)
    assert (a["hidden"], a["dropout"]) == (512, 0.2)
    a = arch(tmp_path / "bf16", "--max-minutes", 10, "--amp", "bf16")
    assert (a["hidden"], a["dropout"]) == (512, 0.2)
    a = arch(tmp_path / "auto-long", "--max-minutes", 25, "--amp", "auto")  # float32 from 20 minutes
    assert (a["hidden"], a["dropout"]) == (512, 0.2)
    a = arch(tmp_path / "fp32", "--max-minutes", 10, "--amp", "off")
    assert (a["hidden"], a["dropout"]) == (384, 0.0)
    a = arch(tmp_path / "given", "--max-minutes", 25, "--hidden", 16, "--dropout", 0.1)
    assert (a["hidden"], a["dropout"]) == (16, 0.1)
    a = arch(tmp_path / "opt", "--max-minutes", 25, "--hidden", 16, "--opt", "dropout=0.1")  # = --dropout
    assert a["dropout"] == 0.1


def test_bad_text_file(cli, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n", encoding="utf-8")
    assert_one_line_error(cli("train", "charlm", "--data", empty, "--out", tmp_path / "o", *LM), "empty")


def test_too_little_data_leaves_no_run_directory(cli, tmp_path, text_file):
    """The data-size check ran after run.json and .lock were written into --out: a failed command
    left a run directory without a checkpoint, which sample/eval/--resume then tripped over."""
    small = tmp_path / "small.txt"
    small.write_text(text_file.read_text(encoding="utf-8")[:300], encoding="utf-8")
    r = cli("train", "charlm", "--data", small, "--out", tmp_path / "o", *LM, "--batch-size", 64)
    assert_one_line_error(r, "fewer than --batch-size x --seq-len")
    assert not (tmp_path / "o").exists()
    r = cli("train", "charlm", "--data", small, "--out", tmp_path / "o", *LM, "--max-steps", 1)
    assert r.rc == 0, r.err


def test_max_steps_alone_schedules_by_steps(cli, tmp_path, text_file):
    """``--max-steps`` without ``--max-minutes``: the learning rate follows the steps (warm-up,
    cosine down to its floor at the last step), so a run is reproducible; before, the default
    5-minute clock drove it, and a 12-step run never left the warm-up."""
    rows = []
    for name in ("a", "b"):
        out = tmp_path / name
        r = cli(
            "train", "charlm", "--data", text_file, "--out", out, "--max-steps", "12", "--log-every", "1", *LM
        )
        assert r.rc == 0, r.err
        rows.append([json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()])
    train = [r for r in rows[0] if r["split"] == "train"]
    lrs = [r["lr"] for r in train]
    assert max(lrs) == pytest.approx(3e-3, rel=0.05)  # the recipe's peak, reached
    assert lrs[-1] < 0.2 * max(lrs)  # and decayed by the last step
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]  # no clock in the schedule


def test_amp_flag(cli, tmp_path, text_file, monkeypatch):
    """--amp auto: bfloat16 on CPUs with native bfloat16 arithmetic, else off; explicit values
    pass through; training runs with it (the run prints the precision)."""
    import torch

    from rnnkit.cli.common import resolve_amp

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    for native, want in ((True, "bf16"), (False, None)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        assert resolve_amp("auto", cpu) == want
    assert resolve_amp("auto", torch.device("cuda")) is None
    assert [resolve_amp(a, cpu) for a in ("off", "fp16", "bf16")] == [None, "fp16", "bf16"]
    out = tmp_path / "amp"
    r = cli("train", "charlm", "--data", text_file, "--out", out, "--max-steps", 2, "--amp", "bf16", *LM)
    assert r.rc == 0 and "mixed precision: bf16 autocast" in r.out
    # charlm's auto: bf16 below BF16_BELOW_MINUTES (20), float32 from there on
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    for minutes, amp in ((1, True), (20, False)):
        budget = ["--max-steps", 1, "--max-minutes", minutes]
        r = cli("train", "charlm", "--data", text_file, "--out", tmp_path / f"auto{minutes}", *budget, *LM)
        assert r.rc == 0 and ("mixed precision: bf16" in r.out) == amp


def test_resume_continues_the_schedule_exactly(cli, tmp_path, text_file):
    """A run resumed from its step-2 checkpoint == the run that never stopped (the learning-rate
    schedule spans --max-steps). BudgetLR used to recompute the rate on load from a trainer whose
    step was not restored yet: the first resumed update took the warmup's first rate."""
    import shutil

    args = ["train", "charlm", "--data", text_file, "--max-steps", 4, "--checkpoint-every", 2,
            "--arch", "gru", "--amp", "off", "--log-every", 1, *LM]  # fmt: skip
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(*args, "--out", a).rc == 0
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(a / "run.json", b / "run.json")
    shutil.copytree(a / "checkpoints" / "step-000000002", b / "checkpoints" / "step-000000002")
    (b / "checkpoints" / "latest").write_text("step-000000002\n")
    r = cli(*args, "--out", b, "--resume")
    assert r.rc == 0, r.err

    def train_losses(out):
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]

    resumed = [row for row in train_losses(a) if row[0] > 2]  # b's metrics.jsonl starts at the resume
    assert train_losses(b) == resumed and len(resumed) == 2
    assert results(b) == results(a)


def test_schedule_sets_each_steps_rate_from_the_steps_done(cli, tmp_path, text_file):
    """With --max-steps N, update k + 1 runs at lr_at(k / N), k updates done: the trainer stepped
    the scheduler before counting the step, so every rate came one step late (updates 1 and 2 both
    at the warmup's first rate, the last at lr_at((N - 2) / N))."""
    from rnnkit.tasks import RECIPE, lr_at

    out = tmp_path / "lm"
    r = cli("train", "charlm", "--data", text_file, "--out", out, "--max-steps", 4, "--log-every", 1,
            "--amp", "off", *LM)  # fmt: skip
    assert r.rc == 0, r.err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # a row's lr is the optimizer's after its step: the rate of the next update
    logged = [(row["step"], row["lr"]) for row in rows if row["split"] == "train"]
    assert logged == [(k, pytest.approx(lr_at(RECIPE, k / 4))) for k in range(1, 5)]


def test_resume_keeps_the_runs_window(cli, tmp_path, text_file):
    """--resume without --seq-len went on with the default 100-character windows (another data
    order, the stored position meaningless) while run.json still said 16: the stored one is used,
    silently (it said "command line's 100 ignored" of the default, not typed); one given that
    differs is named as ignored."""
    out = tmp_path / "lm"
    i = LM.index("--seq-len")
    other = LM[:i] + LM[i + 2 :]
    assert cli("train", "charlm", "--data", text_file, "--out", out, "--max-steps", 2, *LM).rc == 0
    r = cli("train", "charlm", "--data", text_file, "--out", out, "--max-steps", 3, "--resume", *other)
    assert r.rc == 0 and "--seq-len" not in r.out and "ignored" not in r.out, (r.out, r.err)
    assert json.loads((out / "run.json").read_text())["seq_len"] == 16
    state = json.loads((out / "checkpoints" / "step-000000003" / "state.json").read_text())["state"]
    assert dict(state["__dict__"])["tokens_seen"] == 3 * 4 * 16  # 3 steps of 4 streams x 16 characters
    r = cli("train", "charlm", "--data", text_file, "--out", out, "--max-steps", 4, "--resume", *other,
            "--seq-len", 20)  # fmt: skip
    assert r.rc == 0 and "resuming with the run's --seq-len 16 (command line's 20 ignored)" in r.out, r.err


@pytest.mark.parametrize(("flags", "steps"), [([], [3, 5]), (["--checkpoint-every", 2], [2, 4, 5]),
                                              (["--checkpoint-every", 0], [5])])  # fmt: skip
def test_checkpoints_at_each_validation_by_default(cli, tmp_path, text_file, flags, steps):
    """A killed run loses at most the steps since its last validation: by default a checkpoint
    is written with every --val-every validation (and the final one); --checkpoint-every N
    overrides it, 0 keeps the final one only."""
    from rnnkit.train import list_checkpoints

    out = tmp_path / "lm"
    r = cli("train", "charlm", "--data", text_file, "--out", out, "--max-steps", 5, "--val-every", 3,
            "--amp", "off", *flags, *LM)  # fmt: skip
    assert r.rc == 0, r.err
    saved = [int(p.name.split("-")[1]) for p in list_checkpoints(out / "checkpoints")]
    assert saved == steps


def test_validation_text_shorter_than_the_ranks(cli, tmp_path, monkeypatch):
    """A validation split of fewer characters than ranks gave each rank's streams 0 characters:
    'seq_len must be >= 1, got 0', naming neither the text nor the ranks."""
    import rnnkit.cli.charlm as C

    text = tmp_path / "short.txt"
    text.write_text("abcd" * 15, encoding="utf-8")  # 57 train / 3 valid characters
    monkeypatch.setattr(C, "ranks", lambda: {"num_replicas": 4, "rank": 0})
    flags = ["--hidden", "8", "--seq-len", "8", "--batch-size", "4", "--max-steps", "1", "--no-progress"]
    r = cli("train", "charlm", "--data", text, "--out", tmp_path / "o", *flags)
    assert_one_line_error(r, "validation text has 3 characters", "fewer than the 4 ranks")


def test_resume_trains_in_the_runs_precision(cli, tmp_path, text_file, monkeypatch):
    """--amp was not stored: a resume decided `auto` again (from this machine and the budget, or
    the default off of a run started with --amp bf16), another precision than the run's."""
    import torch

    def native(yes: bool) -> None:  # whether this CPU computes bfloat16 natively (what auto asks)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: yes, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: yes, raising=False)

    out, base = tmp_path / "lm", ["train", "charlm", "--data", text_file, "--out", tmp_path / "lm", *LM]
    native(True)
    r = cli(*base, "--max-steps", 2)  # --amp auto: bf16 here
    assert r.rc == 0 and "mixed precision: bf16" in r.out, r.err
    assert json.loads((out / "run.json").read_text())["train"]["amp"] == "bf16"  # resolved, not "auto"
    native(False)  # auto would be off now: the run's bf16 wins, nothing given on the command line
    r = cli(*base, "--max-steps", 3, "--resume")
    assert r.rc == 0 and "mixed precision: bf16" in r.out, r.err
    assert "--amp" not in r.out
    r = cli(*base, "--max-steps", 4, "--resume", "--amp", "off")  # given: ignored, saying so
    assert r.rc == 0 and "mixed precision: bf16" in r.out, r.err
    assert "resuming with the run's --amp bf16 (command line's off ignored)" in r.out
    r = cli(*base, "--max-steps", 5, "--resume", "--amp", "bf16")  # the same: nothing to say
    assert r.rc == 0 and "--amp" not in r.out
    other = tmp_path / "fp32"  # a memory task: default off, stored as off
    r = cli("train", "memory", "--task", "adding", "--length", 5, "--n-train", 32, "--n-valid", 8,
            "--out", other, "--hidden", 8, "--max-steps", 1, "--no-progress")  # fmt: skip
    assert r.rc == 0 and json.loads((other / "run.json").read_text())["train"]["amp"] == "off"


def test_eval_defaults_to_the_runs_window(cli, tmp_path, text_file):
    """`rnnkit eval` cut the text into --seq-len windows of 200 by default whatever the run was
    trained on: a batch-norm LSTM then read the statistics of steps it was never trained at (and
    the window sets how many streams a short text is cut into). Now the run's --seq-len."""
    out = tmp_path / "bn"
    r = cli("train", "charlm", "--data", text_file, "--out", out, "--max-steps", 3, "--opt=norm=batch", *LM)
    assert r.rc == 0, r.err
    default = cli("eval", "--checkpoint", out, "--data", text_file)
    same = cli("eval", "--checkpoint", out, "--data", text_file, "--seq-len", 16)  # the run's
    other = cli("eval", "--checkpoint", out, "--data", text_file, "--seq-len", 200)
    assert default.rc == same.rc == other.rc == 0, default.err
    assert default.out == same.out and default.out != other.out


def test_eval_of_the_validation_text_gives_the_runs_validation_loss(cli, tmp_path, text_file):
    """`rnnkit eval` cut the text into 16 streams by default whatever the run's --batch-size: its
    number for the run's own validation text differed from the run's final validation (other
    stream starts, each with a cold state). Now the run's --batch-size (and --seq-len)."""
    from rnnkit.cli.charlm import _load_text

    out, valid = tmp_path / "run", tmp_path / "valid.txt"
    r = cli("train", "charlm", "--data", text_file, "--out", out, "--max-steps", 3, *LM)
    assert r.rc == 0, r.err
    valid.write_text(_load_text(str(text_file), None)[1], encoding="utf-8")
    r = cli("eval", "--checkpoint", out, "--data", valid)
    assert r.rc == 0, r.err
    want = json.loads((out / "results.json").read_text())["valid_nats_per_char"]
    assert f"{want:.4f} nats/char" in r.out, (want, r.out)


def test_resume_on_a_text_that_gained_characters_names_the_cause(cli, tmp_path, text_file):
    """The run's text gained a character after training: --resume failed with "characters not in
    the vocabulary: ['Z']", naming neither the file nor the cause; it says the text changed (a run
    with the file's fingerprint says so first: tests/cli/test_data_fingerprints.py; one recorded
    before them, here, by the characters)."""
    data = tmp_path / "t.txt"
    data.write_text(text_file.read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "lm"
    assert cli("train", "charlm", "--data", data, "--out", out, "--max-steps", 2, *LM).rc == 0
    data.write_text(data.read_text(encoding="utf-8") + "\nZ", encoding="utf-8")
    r = cli("train", "charlm", "--data", data, "--out", out, "--max-steps", 3, "--resume", *LM)
    assert_one_line_error(r, f"--resume: {data.resolve()} changed since the run was trained on it")
    doc = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "fingerprints"}))
    r = cli("train", "charlm", "--data", data, "--out", out, "--max-steps", 3, "--resume", *LM)
    assert_one_line_error(r, f"--resume: {data} has characters not in the vocabulary: ['Z']", "text changed")
    assert results(out)["step"] == 2


def test_sample_seed_out_of_range_is_a_usage_error(cli, trained):
    """It exited 1 with torch's "Overflow when unpacking long long", naming no flag."""
    r = cli("sample", "--checkpoint", trained, "--length", 5, "--seed", 2**64)
    assert r.rc == 2 and r.out == ""
    assert_one_line_error(r, "--seed", "[-2**63, 2**64)")


def test_vocabulary_holds_the_characters_after_the_validation_split(cli, tmp_path, text_file, monkeypatch):
    """The vocabulary was the characters of train + valid only: a text longer than both (95 % +
    200,000 characters; here a 100-character validation split) has a tail, and `rnnkit eval` of the
    run's own text failed on a character only there. Now the whole text's (docs/charlm.md)."""
    import functools

    import rnnkit.datasets

    split = functools.partial(rnnkit.datasets.char_lm_split, valid_chars=100)
    monkeypatch.setattr(rnnkit.datasets, "char_lm_split", split)
    data, out = tmp_path / "t.txt", tmp_path / "lm"
    text = text_file.read_text(encoding="utf-8") + "\nZ"
    data.write_text(text, encoding="utf-8")
    assert "Z" not in "".join(split(text))  # only in the tail
    assert cli("train", "charlm", "--data", data, "--out", out, "--max-steps", 1, *LM).rc == 0
    assert json.loads((out / "run.json").read_text())["vocab"]["chars"] == sorted(set(text))
    r = cli("eval", "--checkpoint", out, "--data", data)
    assert r.rc == 0, r.err
