"""Bad arguments and bad files: one line ``rnnkit: error: ...`` on stderr, non-zero exit."""

from __future__ import annotations

import pytest

from tests.cli.conftest import TINY, assert_one_line_error

MEM = ["train", "memory", "--task", "plus1", "--length", 5, "--n-train", 32, "--n-valid", 8]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        ([], ["required"]),
        (["frobnicate"], ["invalid choice", "frobnicate"]),
        (["train", "nosuchtask"], ["invalid choice"]),
        ([*MEM, "--hidden", "0"], ["--hidden", "positive"]),
        ([*MEM, "--max-steps", "-3"], ["--max-steps"]),
        ([*MEM, "--lr", "abc"], ["--lr"]),
        # 0 is allowed (the final checkpoint only): the error said "expected a positive integer"
        ([*MEM, "--checkpoint-every", "-1"], ["--checkpoint-every", "an integer >= 0", "-1"]),
        ([*MEM, "--checkpoint-every", "x"], ["--checkpoint-every", "an integer >= 0", "'x'"]),
        ([*MEM, "--task", "juggle"], ["--task", "juggle"]),
        (["train", "classify", "--tokens", "bytes"], ["--tokens"]),
        (["train", "tag"], ["--data"]),
        (["sample"], ["--checkpoint"]),
    ],
)
def test_usage_errors_exit_2(cli, argv, fragments):
    r = cli(*argv)
    assert r.rc == 2
    assert_one_line_error(r, *fragments)


def test_unknown_arch_and_option(cli, tmp_path):
    assert_one_line_error(
        cli(*MEM, "--arch", "transformer", "--out", tmp_path / "a", *TINY), "transformer", "tcn"
    )
    r = cli(*MEM, "--opt", "no_such_option=1", "--out", tmp_path / "b", *TINY)
    assert_one_line_error(r, "no_such_option")
    # the model is built before anything is written: no half-made run directory is left
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    r = cli(*MEM, "--opt", "novalue", "--out", tmp_path / "c", *TINY)
    assert r.rc == 2
    assert_one_line_error(r, "key=value")


@pytest.mark.parametrize("arch, takes", [("minlstm", "log_space"), ("conv-lru", "r_min"), ("qrnn", "window")])
def test_an_option_the_parallel_layer_does_not_take(cli, tmp_path, arch, takes):
    """The error names the rejected --opt and the options the family takes (it named neither
    these, nor for minlstm its class: 'MinGRU.__init__() got an unexpected keyword argument')."""
    r = cli(*MEM, "--arch", arch, "--opt", "norm=layer", "--out", tmp_path / "a", *TINY)
    assert_one_line_error(r, "does not take --opt norm", takes)
    assert "MinGRU" not in r.err and "batch_first" not in r.err


def test_missing_and_bad_files(cli, tmp_path, conllu):
    missing = tmp_path / "nope.csv"
    r = cli("train", "classify", "--data", missing, "--out", tmp_path / "o", *TINY)
    assert r.rc == 1
    assert_one_line_error(r, "nope.csv")
    assert_one_line_error(
        cli("train", "tag", "--data", tmp_path / "x.conllu", "--out", tmp_path / "o"), "x.conllu"
    )
    bad = tmp_path / "bad.conllu"
    bad.write_text("1\tword\tonly-three-fields\n\n", encoding="utf-8")
    assert_one_line_error(cli("train", "tag", "--data", bad, "--out", tmp_path / "o"), "bad.conllu:1", "10")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,a\nna\xefve,b\n".encode("latin-1"))
    assert_one_line_error(cli("train", "classify", "--data", latin, "--out", tmp_path / "o"), "UTF-8")
    three = tmp_path / "three.csv"
    three.write_text("a,b,c\nd,e,f\n", encoding="utf-8")
    assert_one_line_error(cli("train", "classify", "--data", three, "--out", tmp_path / "o"), "2 columns")
    r = cli("train", "classify", "--data", "mnist", "--out", tmp_path / "o")
    assert r.rc == 2  # a bad flag value is a usage error, as the others (it was 1); a missing file is 1
    assert_one_line_error(r, "--data must be digits, anyplus1 or a FILE.csv", "'mnist'")
    assert not (tmp_path / "o").exists()


def test_forecast_bad_column_and_values(cli, tmp_path, series_csv):
    out = tmp_path / "o"
    assert_one_line_error(cli("train", "forecast", "--data", series_csv, "--out", out), "--column")
    r = cli("train", "forecast", "--data", series_csv, "--column", "price", "--out", out)
    assert_one_line_error(r, "price", "value")
    text = tmp_path / "t.csv"
    text.write_text("value\n1\n2\nthree\n", encoding="utf-8")
    assert_one_line_error(
        cli("train", "forecast", "--data", text, "--column", "value", "--out", out), "t.csv:4"
    )
    r = cli("train", "forecast", "--data", series_csv, "--column", "value", "--window", 200, "--out", out)
    assert_one_line_error(r, "too short")
    r = cli(
        "train", "forecast", "--data", series_csv, "--column", "value", "--arima-order", "1,2", "--out", out
    )
    assert_one_line_error(r, "--arima-order")


def test_checkpoint_errors(cli, tmp_path):
    assert_one_line_error(cli("sample", "--checkpoint", tmp_path / "missing"), "does not exist")
    assert_one_line_error(cli("eval", "--checkpoint", tmp_path, "--data", tmp_path / "x.txt"), "run.json")
    (tmp_path / "run.json").write_text("{not json", encoding="utf-8")
    assert_one_line_error(cli("sample", "--checkpoint", tmp_path), "not valid JSON")
    out = tmp_path / "mem"
    assert cli(*MEM, "--out", out, *TINY).rc == 0
    assert_one_line_error(cli("sample", "--checkpoint", out), "'memory' run")
    assert_one_line_error(cli(*MEM, "--out", tmp_path / "fresh", "--resume", *TINY), "no checkpoint")


def test_out_is_a_file(cli, tmp_path):
    """A usage error (exit 2) naming the flag and the path: it exited 1, a run-time failure. An
    --out inside a file was mkdir's "[Errno 20] Not a directory" (exit 1, no flag named)."""
    f = tmp_path / "file"
    f.write_text("x")
    r = cli(*MEM, "--out", f, *TINY)
    assert_one_line_error(r, f"--out {f} is a file, not a directory")
    assert r.rc == 2 and f.read_text() == "x"
    for resume in ((), ("--resume",)):
        r = cli(*MEM, "--out", f / "sub" / "run", *resume, *TINY)
        assert_one_line_error(r, f"--out {f / 'sub' / 'run'} is inside {f}, a file, not a directory")
        assert r.rc == 2 and f.read_text() == "x"
    # a dangling symbolic link was mkdir's "[Errno 17] File exists" (exit 1, no flag named)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    for out, said in ((link, "is"), (link / "run", f"is inside {link},")):
        r = cli(*MEM, "--out", out, *TINY)
        assert_one_line_error(r, f"--out {out} {said} a broken symbolic link to {tmp_path / 'gone'}")
        assert r.rc == 2 and not (tmp_path / "gone").exists()


def test_debug_env_shows_traceback(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNKIT_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli("train", "classify", "--data", tmp_path / "nope.csv", "--out", tmp_path / "o", *TINY)


FORECAST = ["forecast", "--data", "SERIES", "--column", "value", "--window", 8, "--horizon", 3,
            "--arima-order", "none"]  # fmt: skip


@pytest.mark.parametrize(
    "task",
    [
        ["charlm", "--data", "TEXT", "--arch", "conv-lstm", "--seq-len", 8, "--batch-size", 2],
        FORECAST,
        [*FORECAST, "--arch", "conv-gru"],
        ["memory", "--task", "arith", "--digits", 1, "--n-train", 16, "--n-valid", 4, "--arch", "mingru"],
    ],
)
def test_causal_tasks_refuse_a_bidirectional_encoder(cli, tmp_path, text_file, series_csv, task):
    """A model that predicts the next input from the inputs so far must not read ahead: an
    encoder that did trained on the answers (and its step-by-step use computed another function)."""
    task = [{"TEXT": text_file, "SERIES": series_csv}.get(a, a) for a in task]
    r = cli("train", *task, "--opt", "bidirectional=True", "--out", tmp_path / "o", *TINY)
    assert_one_line_error(r, "unidirectional", "bidirectional")
    assert not (tmp_path / "o").exists()  # (run.json and .lock were written before the model was built)


def test_damaged_or_foreign_checkpoint_files_are_named(cli, tmp_path, text_file):
    """A truncated, missing or foreign file of a checkpoint: one line naming that file (a damaged
    safetensors file gave a traceback, a missing one 'no checkpoint in', bad JSON no file name)."""
    import shutil

    charlm = ["train", "charlm", "--data", text_file, "--seq-len", 8, "--batch-size", 2, *TINY]
    out, other = tmp_path / "run", tmp_path / "other"
    assert cli(*charlm, "--out", out).rc == 0
    assert cli(*charlm, "--out", other, "--hidden", 12).rc == 0
    step = out / "checkpoints" / "step-000000003"
    use = ("sample", "--checkpoint", out, "--length", 3)
    resume = (*charlm, "--out", out, "--resume", "--max-steps", 5)
    for name, damage, cmd in [
        ("model.safetensors", lambda f: f.write_bytes(f.read_bytes()[:100]), use),
        ("optimizer.safetensors", lambda f: f.write_bytes(b""), resume),
        ("state.json", lambda f: f.write_text(f.read_text()[:40]), use),
    ]:
        shutil.copytree(step, tmp_path / "backup")
        damage(step / name)
        assert_one_line_error(cli(*cmd), name)
        shutil.rmtree(step)
        (tmp_path / "backup").rename(step)
    (step / "model.safetensors").unlink()
    assert_one_line_error(cli(*use), "incomplete", "model.safetensors")
    shutil.rmtree(out / "checkpoints")
    shutil.copytree(other / "checkpoints", out / "checkpoints")  # a checkpoint of another shape
    assert_one_line_error(cli(*use), "model.safetensors", "size mismatch")


def test_a_csv_without_column_lists_its_columns(tmp_path):
    # "--data series.csv needs --column NAME" left the user to open the file for the names
    from rnnkit.tasks.forecast import load_series

    csv = tmp_path / "series.csv"
    csv.write_text("t,value\n0,1.5\n1,2.5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"needs --column NAME.*columns are \['t', 'value'\]"):
        load_series(str(csv))


@pytest.mark.parametrize("task", ["memory", "charlm"])
def test_an_explicit_dropout_0_counts_as_given(cli, tmp_path, task, text_file):
    """``--dropout 0`` could not be told from the default: with ``--opt dropout=0.3`` the run
    silently used 0.3. Given both, they must agree (as for any other --dropout)."""
    data = ["--data", text_file] if task == "charlm" else []
    argv = ["train", task, *data, "--out", tmp_path / "a", *TINY]
    r = cli(*argv, "--dropout", 0, "--opt", "dropout=0.3", "--layers", 2)
    assert_one_line_error(r, "--dropout 0.0 and --opt dropout=0.3 disagree")
    assert not (tmp_path / "a").exists()
    from rnnkit.arch import arch_config
    from rnnkit.cli import build_parser

    args = build_parser().parse_args([str(a) for a in argv] + ["--dropout", "0", "--opt", "dropout=0"])
    assert arch_config(args)["dropout"] == 0.0  # agreeing: fine
    args = build_parser().parse_args([str(a) for a in argv] + ["--opt", "dropout=0.3"])
    assert task == "charlm" or arch_config(args)["dropout"] == 0.3  # --opt alone: as before


def test_anyplus1_with_one_sequence_is_refused_before_training(cli, tmp_path):
    """--n 1 left an empty validation part: the run trained, wrote its directory, then failed with
    'evaluate() got no target'. A bad flag value: a usage error (status 2, it was 1)."""
    r = cli(
        "train", "classify", "--data", "anyplus1", "--n", 1, "--length", 4, "--out", tmp_path / "a", *TINY
    )
    assert r.rc == 2
    assert_one_line_error(r, "--n", "at least 2", "got 1")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "argv, code, fragment",
    [
        (["--threads", "0"], 2, "--threads must be >= 1"),
        (["--layers", "2"], 2, "--checkpoint"),
        (["--variants", "elman"], 2, "elman"),
        (["--variants", "lstm:foo=1"], 2, "foo"),
        (["--checkpoint", "no/such/run"], 1, "no/such/run"),
        # a bad --cell beside a checkpoint is a bad flag value too (it was 1, found loading it)
        (["--checkpoint", "no/such/run", "--cell", "elman"], 2, "--cell must be one of"),
    ],
)
def test_diagnose_exits_alike_from_both_entry_points(cli, tmp_path, capsys, argv, code, fragment):
    """A bad flag value of ``rnnkit diagnose`` exited 1, of ``python -m rnnkit.diagnostics`` 2 (with
    argparse's usage dump), a missing checkpoint 1 and 2: usage errors are 2 and failures 1 from both."""
    from rnnkit.diagnostics import main as diagnostics_main

    argv = [*argv, "--quick", "--no-horizon", "--out", tmp_path / "d"]
    r = cli("diagnose", *argv)
    assert r.rc == code, r.err
    assert_one_line_error(r, fragment)
    assert diagnostics_main([str(a) for a in argv]) == code
    assert capsys.readouterr().err == r.err
    assert code == 1 or not (tmp_path / "d").exists()  # a bad flag: checked before anything is written


def test_forecast_data_that_is_no_csv_is_a_usage_error(cli, tmp_path):
    """As classify's: a --data neither sunspots nor a file name of a CSV is a bad flag value (2;
    it was 1); a missing FILE.csv is a failure (1)."""
    r = cli("train", "forecast", "--data", "sunspot", "--out", tmp_path / "o")
    assert r.rc == 2
    assert_one_line_error(r, "--data must be sunspots or a FILE.csv", "'sunspot'")
    r = cli("train", "forecast", "--data", tmp_path / "none.csv", "--column", "v", "--out", tmp_path / "o")
    assert r.rc == 1
    assert_one_line_error(r, "none.csv")


@pytest.mark.parametrize(
    "argv, owners",
    [
        (["train", "classify", "--window", "5"], "train forecast"),
        (["train", "classify", "--sampling=teacher"], "train forecast, train seq2seq"),
        (["train", "tag", "--data", "x.conllu", "--temperature", "1"], "sample"),
        (["train", "memory", "--tokens", "char"], "train classify"),
        (["predict", "--checkpoint", "r", "--window", "3"], "train forecast"),
    ],
)
def test_a_flag_of_another_command_names_the_commands_it_belongs_to(cli, tmp_path, argv, owners):
    """A task-specific flag given to another task was refused as 'unrecognized arguments: --window 5
    (see rnnkit --help)': it is a usage error naming the flag and the commands that take it."""
    r = cli(*argv, *(["--out", tmp_path / "o"] if argv[0] == "train" else []))
    assert r.rc == 2
    flag = argv[-1].split("=")[0] if "=" in argv[-1] else argv[-2]
    where = " ".join(argv[:2]) if argv[0] == "train" else argv[0]
    assert_one_line_error(
        r, f"{flag} is not a flag of {where}", f"it is one of {owners}", f"rnnkit {where} --help"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "classify", "--tokens", "char"], "--tokens does not apply to --data digits"),
        (["train", "classify", "--n", "50", "--embedding-dim", "8"], "--embedding-dim, --n do not apply to"),
        (
            ["train", "classify", "--data", "anyplus1", "--tokens", "char"],
            "--tokens does not apply to --data anyplus1",
        ),
        (
            ["train", "classify", "--data", "x.csv", "--length", "9"],
            "--length does not apply to --data FILE.csv",
        ),
        ([*MEM[:2], "--task", "arith", "--length", "9"], "--length does not apply to --task arith"),
        ([*MEM, "--digits", "4"], "--digits does not apply to --task plus1"),
        ([*MEM[:2], "--task", "adding", "--n-copy", "4"], "--n-copy does not apply to --task adding"),
        (["train", "forecast", "--column", "v"], "--column does not apply to --data sunspots"),
    ],
)
def test_a_task_flag_its_data_does_not_read_is_a_usage_error(cli, tmp_path, argv, fragment):
    """A task's flag for another of its data sources or benchmarks (classify's --tokens with the
    digits, memory's --digits outside arith, forecast's --column with sunspots) was silently ignored."""
    r = cli(*argv, "--out", tmp_path / "o")
    assert r.rc == 2
    assert_one_line_error(r, fragment)
    assert not (tmp_path / "o").exists()


def test_an_error_every_rank_raises_alike_is_printed_by_rank_0_alone(monkeypatch, capsys):
    """Under torchrun each rank printed ``rnnkit: error: ...``, an error all ranks share once per
    rank; one marked as raised alike on every rank (on_every_rank) is now rank 0's to print, any
    other (a rank's own) is still printed by each rank that has it."""
    from rnnkit.cli import _error

    shared, own = ValueError("shared"), ValueError("own")
    shared.every_rank = True
    for rank, want in (("0", "shared own"), ("1", "own")):
        monkeypatch.setenv("RANK", rank)
        _error(shared)
        _error(own)
        got = [ln.removeprefix("rnnkit: error: ") for ln in capsys.readouterr().err.splitlines()]
        assert got == want.split(), (rank, got)


def test_an_out_in_use_at_resume_stays_marked_as_every_ranks_error(tmp_path, monkeypatch):
    """claim_out_dir's OutDirInUse (raised alike on every rank, decided by an all-reduce) became a
    plain CLIError in sweep_run_dir (--resume), which lost the mark: every rank printed it."""
    from rnnkit.cli import CLIError, rundir
    from rnnkit.train import distributed as dist
    from rnnkit.train import outdir

    def busy(out, device=None):
        raise dist.on_every_rank(outdir.OutDirInUse(f"{out} is in use"))

    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(outdir, "claim_out_dir", busy)
    with pytest.raises(CLIError, match="in use by another rnnkit training process") as e:
        rundir.sweep_run_dir(tmp_path)
    assert getattr(e.value, "every_rank", False)


def _as_rank(monkeypatch, rank: int, rank_0_sends: list[float]) -> None:
    """Run as DDP rank ``rank`` of two: its all-reduces take the max with ``rank_0_sends`` in turn."""
    from rnnkit.train import distributed as dist

    sent = iter(rank_0_sends)
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "is_main_process", lambda: rank == 0)
    monkeypatch.setattr(dist, "all_reduce_max", lambda value, device=None: max(value, next(sent)))


def test_an_out_holding_a_run_is_refused_as_rank_0_finds_it_marked_for_every_rank(cli, tmp_path, monkeypatch):
    """Under torchrun every rank checked ``--out`` itself and raised "already holds a run" unmarked:
    each rank printed it. Rank 0's finding (it alone writes there) is now all-reduced and the refusal
    marked (printed once). A rank whose node-local ``--out`` holds a run where rank 0's holds none
    refused alone (and left rank 0 waiting in a collective): it follows rank 0 now."""
    import argparse

    from rnnkit.cli import CLIError
    from rnnkit.cli.common import prepare_out

    held, empty = tmp_path / "held", tmp_path / "empty"
    assert cli(*MEM, "--out", held, "--max-steps", 1).rc == 0

    def args(out):
        return argparse.Namespace(out=str(out), resume=False, seed=0, device="cpu")

    for rank in (0, 1):  # a shared file system: rank 0 finds checkpoints/ and a checkpoint
        _as_rank(monkeypatch, rank, [1.0, 0.0, 1.0])
        with pytest.raises(CLIError, match="already holds a run") as e:
            prepare_out(args(held), {"task": "memory"})
        assert getattr(e.value, "every_rank", False)
    _as_rank(monkeypatch, 1, [0.0, 0.0])  # rank 1's --out holds a run, rank 0's none: as rank 0
    assert prepare_out(args(held), {"task": "memory"})["task"] == "memory"
    _as_rank(monkeypatch, 0, [0.0, 0.0])  # rank 0 finds none, whatever the others do
    assert prepare_out(args(empty), {"task": "memory"})["task"] == "memory"


def test_predict_input_that_is_a_directory_says_so(tmp_path):
    """``predict --input DIR`` said ``no such file`` of a directory that exists."""
    from rnnkit.cli.predict import _lines

    with pytest.raises(IsADirectoryError, match="is a directory, not a file"):
        _lines(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        _lines(str(tmp_path / "absent.txt"))
