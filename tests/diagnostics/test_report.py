"""``rnnkit diagnose``: the default (fresh cells) run, its flags and its files, end to end."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit.diagnostics import add_arguments, gradient_flow, main, read_summary, run

PNGS = [
    "gradient_flow",
    "jacobian_spectrum",
    "eigenvalues",
    "power_iteration",
    "activity_rnn",
    "activity_lstm",
]


def test_quick_run_writes_pngs_and_a_consistent_summary(tmp_path, capsys):
    out = tmp_path / "diag"
    assert main(["--quick", "--out", str(out), "--variants", "rnn", "lstm", "--lags", "2", "3"]) == 0
    for name in [*PNGS, "memory_horizon"]:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 200_000
    text = (out / "summary.txt").read_text()
    assert text == capsys.readouterr().out
    assert "rnn" in text and "lstm" in text and "memory horizon" in text and "cell state" in text
    data = json.loads((out / "summary.json").read_text())
    snaps = data["snapshots"]
    assert set(snaps) == {"rnn", "lstm"} and set(snaps["lstm"]) == {"init", "trained"}
    assert 0.0 <= snaps["lstm"]["trained"]["accuracy"] <= 1.0
    norms = np.array(snaps["rnn"]["init"]["grad_norms"]["last"]["l0"]["h"])
    assert norms.shape == (12,) and np.all(np.isfinite(norms)) and np.all(norms > 0)
    assert set(data["memory_horizon"]["horizon"]) == {"rnn", "lstm"}


def test_activity_file_names_are_unique():
    """Labels equal but for their non-alphanumerics used to write the same activity_*.png."""
    from rnnkit.diagnostics.report import activity_file_names

    labels = ["a_b", "a.b", "a-b", "a_b_2", "lstm", "LSTM", "gru:zoneout=0.1"]
    names = activity_file_names(labels)
    assert names == {
        "a_b": "activity_a_b.png",
        "a.b": "activity_a_b_2.png",
        "a-b": "activity_a_b_3.png",
        "a_b_2": "activity_a_b_2_2.png",
        "lstm": "activity_lstm.png",
        "LSTM": "activity_LSTM_2.png",
        "gru:zoneout=0.1": "activity_gru_zoneout_0_1.png",
    }


def test_colliding_labels_get_their_own_activity_figures(tmp_path, monkeypatch):
    import rnnkit.diagnostics.report as report

    monkeypatch.setattr(report, "train_task", lambda *a, **k: (0.5, None))  # the files, not the training
    out = tmp_path / "diag"
    assert main(["--quick", "--no-horizon", "--out", str(out), "--variants", "a.b=rnn", "a_b=gru"]) == 0
    data = json.loads((out / "summary.json").read_text())
    assert data["activity_files"] == {"a.b": "activity_a_b.png", "a_b": "activity_a_b_2.png"}
    assert (out / "activity_a_b.png").is_file() and (out / "activity_a_b_2.png").is_file()
    assert "activity_a_b.png, activity_a_b_2.png" in (out / "summary.txt").read_text()


def test_add_arguments_on_a_subparser_and_bad_values(tmp_path):
    parser = argparse.ArgumentParser(prog="rnnkit")
    sub = parser.add_subparsers(dest="cmd")
    add_arguments(sub.add_parser("diagnose"))
    args = parser.parse_args(
        ["diagnose", "--quick", "--no-horizon", "--out", str(tmp_path), "--variants", "gru"]
    )
    assert run(args) == 0 and (tmp_path / "activity_gru.png").is_file()
    assert (
        main(["--quick", "--no-horizon", "--out", str(tmp_path), "--variants", "elman"]) == 2
    )  # a usage error (it was SystemExit: argparse's)


def test_run_leaves_the_callers_random_stream_alone(tmp_path, monkeypatch):
    """``run`` seeded torch's global generator with ``--seed`` and left it there (and drew from it
    checking the variants): a library caller's own random stream was reset. It is restored; and
    the CUDA generators, which torch.manual_seed reseeds too and the fork does not restore, are
    not seeded (the run is on the CPU)."""
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--quick", "--no-horizon", "--out", str(tmp_path), "--variants", "gru"])
    torch.manual_seed(1234)
    want = torch.rand(3)
    torch.manual_seed(1234)
    seeded.clear()
    assert run(args) == 0
    torch.testing.assert_close(torch.rand(3), want, rtol=0, atol=0)
    assert seeded == []


def test_snapshot_measures_in_evaluation_mode():
    """The fresh and trained models are diagnosed without dropout masks, as a checkpoint is."""
    from rnnkit.diagnostics.report import snapshot

    torch.manual_seed(0)
    m = rnnkit.GRU(1, 4, num_layers=2, dropout=0.5, batch_first=True)
    x = torch.randn(3, 6, 1)
    snap = snapshot(m, x)
    assert m.training
    ref = gradient_flow(m.eval(), x).norms
    np.testing.assert_allclose(snap.flows["last"].norms["l0"]["h"], ref["l0"]["h"])


def test_bad_variant_option_is_a_usage_error(tmp_path, capsys):
    assert (
        main(["--quick", "--no-horizon", "--out", str(tmp_path), "--variants", "lstm:foo=1"]) == 2
    )  # a usage error (it was SystemExit: argparse's)
    assert "foo" in capsys.readouterr().err


def test_a_variant_with_a_projection_is_checked_at_its_widths(tmp_path, monkeypatch, capsys):
    """The variants were checked by building them one unit wide: every ``proj_size`` (which must be
    smaller than the width) was refused, though the +1 models are 16 units (6 with --quick) and
    the horizon's 32 (8). They are checked at those widths now."""
    import rnnkit.diagnostics.report as report

    monkeypatch.setattr(report, "train_task", lambda *a, **k: (0.5, None))  # the flags, not the training
    out = tmp_path / "d"
    assert main(["--quick", "--no-horizon", "--out", str(out), "--variants", "lstm:proj_size=3"]) == 0
    assert (out / "activity_lstm_proj_size_3.png").is_file()
    # fits the +1 models' 40 units, not the horizon's 32: refused before anything runs
    argv = ["--hidden-size", "40", "--out", str(out / "x"), "--variants", "lstm:proj_size=35"]
    assert main(argv) == 2
    assert "proj_size (35) must be smaller than hidden_size (32)" in capsys.readouterr().err
    assert not (out / "x").exists()


def test_summary_of_an_lstm_with_zoneout(tmp_path, monkeypatch, capsys):
    """With zoneout the last cell state is mixed after the last output was taken: ‖∂L/∂c_T-1‖ = 0
    for a loss at the last step, and the summary's ratio was a divide-by-zero RuntimeWarning (an
    error here) and ``inf``. It says n/a now; the norms in summary.json are the measured ones."""
    import rnnkit.diagnostics.report as report

    monkeypatch.setattr(report, "train_task", lambda *a, **k: (0.5, None))
    out = tmp_path / "d"
    assert main(["--quick", "--no-horizon", "--out", str(out), "--variants", "z=lstm:zoneout=0.2"]) == 0
    text = (out / "summary.txt").read_text()
    assert "‖∂L/∂c_0‖/‖∂L/∂c_T-1‖ = n/a (‖∂L/∂c_T-1‖ = 0)" in text and "inf" not in text
    assert (
        read_summary(out / "summary.json")["snapshots"]["z"]["init"]["grad_norms"]["last"]["l0"]["c"][-1] == 0
    )


@pytest.mark.parametrize("variants", [["lstm", "lstm"], ["gru", "a=lstm", "a=rnn"]])
def test_duplicate_variant_labels_are_usage_errors(tmp_path, capsys, variants):
    """Two variants with one label collapsed into one entry of the snapshots and of the memory
    horizon (the second silently replacing the first, after training both); refused up front."""
    out = tmp_path / "d"
    assert main(["--quick", "--out", str(out), "--variants", *variants]) == 2
    err = capsys.readouterr().err
    label = variants[-1].split("=")[0]
    assert f"{label!r} twice" in err and "label=family" in err and not out.exists()
    assert main(["--quick", "--no-horizon", "--out", str(out), "--variants", "a=lstm", "b=lstm"]) == 0
    assert list(read_summary(out / "summary.json")["snapshots"]) == ["a", "b"]


@pytest.mark.parametrize("flag", [["--horizon-steps", "0"], ["--horizon-steps", "-3"], ["--threads", "0"]])
def test_non_positive_counts_are_usage_errors(tmp_path, capsys, flag):
    """Not silently replaced by the default (``--horizon-steps 0`` ran 400 steps) or a traceback."""
    assert (
        main(["--quick", "--out", str(tmp_path), "--variants", "rnn", *flag]) == 2
    )  # a usage error (it was SystemExit: argparse's)
    assert f"{flag[0]} must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("lags", [["6", "3"], ["0", "5"], ["5", "5"]])
def test_bad_lags_are_a_usage_error_before_any_training(tmp_path, capsys, lags):
    """memory_horizon refused them only after the +1 trainings and the figures (half a minute of
    --quick), exit status 1 and a half-written --out; a usage error up front now, as every flag."""
    out = tmp_path / "d"
    assert main(["--quick", "--out", str(out), "--variants", "rnn", "--lags", *lags]) == 2
    assert f"--lags must be increasing positive ints, got {' '.join(lags)}" in capsys.readouterr().err
    assert not out.exists()


def test_the_train_spellings_of_the_layer_flags_are_real_aliases():
    """``rnnkit train`` says --hidden/--layers/--opt, diagnose --hidden-size/--num-layers/--option:
    --hidden and --opt worked only as argparse prefixes (a new --hidden-* or --optim flag would
    have made them ambiguous) and --layers not at all; each spelling is an alias now."""
    parser = argparse.ArgumentParser(prog="diagnose", allow_abbrev=False)  # no prefix matching
    add_arguments(parser)
    argv = ["--checkpoint", "c", "--hidden", "7", "--layers", "2", "--opt", "a=1", "--option", "b=2"]
    args = parser.parse_args(argv)
    assert (args.hidden_size, args.num_layers, args.option) == (7, 2, ["a=1", "b=2"])
    args = parser.parse_args(["--hidden-size", "5", "--num-layers", "3"])
    assert (args.hidden_size, args.num_layers) == (5, 3)


def test_summary_json_is_strict_json(tmp_path, monkeypatch):
    """summary.json was written with bare NaN tokens (a diverged training's accuracy, a per-step
    factor of fewer than two nonzero norms), which jq and JavaScript refuse; the other run files are
    strict JSON. A non-finite value is null now, named in "nonfinite"; read_summary restores it."""
    import rnnkit.diagnostics.report as report

    monkeypatch.setattr(report, "train_task", lambda *a, **k: (float("nan"), None))
    out = tmp_path / "diag"
    assert main(["--quick", "--no-horizon", "--out", str(out), "--variants", "a/b~=rnn"]) == 0

    def refuse(token):
        raise ValueError(f"bare {token} in summary.json")

    data = json.loads((out / "summary.json").read_text(), parse_constant=refuse)
    assert data["snapshots"]["a/b~"]["trained"]["accuracy"] is None
    assert data["nonfinite"]["/snapshots/a~1b~0/trained/accuracy"] == "nan"
    back = read_summary(out / "summary.json")
    assert math.isnan(back["snapshots"]["a/b~"]["trained"]["accuracy"]) and "nonfinite" not in back
    assert back["snapshots"]["a/b~"]["init"] == data["snapshots"]["a/b~"]["init"]


def test_figures_and_summary_text_are_written_atomically(tmp_path, monkeypatch):
    """The PNGs and summary.txt were written in place: a crash or a failed render left a truncated
    file where the previous one was (summary.json and the training kit's plots were atomic). Both
    go through a temporary file renamed over the target now; a failure leaves the old file alone."""
    from matplotlib.figure import Figure

    import rnnkit.diagnostics.summary as summary
    from rnnkit.diagnostics import plots, power_iteration

    pi = power_iteration(np.diag([1.0, 0.5]), steps=3)
    png = tmp_path / "power_iteration.png"
    plots.plot_power_iteration(pi, png)
    old = png.read_bytes()
    txt = tmp_path / "summary.txt"
    summary.write_text_atomic("old\n", txt)

    def crash(target, *a, **k):  # a partial write, then the failure
        with open(target, "w", encoding="utf-8") as f:
            f.write("partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", lambda self, target, **k: crash(target))
    monkeypatch.setattr(summary, "write_synced", crash)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_power_iteration(pi, png)
    with pytest.raises(OSError, match="disk full"):
        summary.write_text_atomic("new\n", txt)
    assert png.read_bytes() == old and txt.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["power_iteration.png", "summary.txt"]


@pytest.mark.parametrize("checkpoint", [False, True])
def test_a_negative_seed_is_a_usage_error_before_any_work(tmp_path, capsys, checkpoint):
    """``--seed -1`` trained, wrote six figures into --out, then crashed in the power iteration
    (numpy: "expected non-negative integer", no flag named, no summary)."""
    out = tmp_path / "d"
    ckpt = ["--checkpoint", str(tmp_path / "none")] if checkpoint else ["--variants", "rnn"]
    assert main(["--quick", "--no-horizon", "--out", str(out), "--seed", "-1", *ckpt]) == 2
    assert "--seed must be an integer in [0, 2**64), got -1" in capsys.readouterr().err
    assert not out.exists()


def test_a_seed_out_of_range_is_a_usage_error_and_the_largest_runs(tmp_path, capsys):
    """``--seed 2**64`` (and 10**16, whose derived seeds ``seed * 7919 + step`` overflowed) failed
    with torch's "Overflow when unpacking long long", naming no flag."""
    out = tmp_path / "d"
    flags = ["--quick", "--variants", "rnn", "--out", str(out)]
    assert main([*flags, "--no-horizon", "--seed", str(2**64)]) == 2
    assert f"--seed must be an integer in [0, 2**64), got {2**64}" in capsys.readouterr().err
    assert not out.exists()
    for seed in (10**16, 2**64 - 1):  # the memory horizon too
        assert main([*flags, "--lags", "5", "--seed", str(seed)]) == 0


def test_an_out_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    """It was mkdir's "[Errno 17] File exists" (naming no flag), after the checkpoint was read."""
    (tmp_path / "f").write_text("x")
    assert main(["--quick", "--no-horizon", "--variants", "rnn", "--out", str(tmp_path / "f")]) == 2
    assert f"--out {tmp_path / 'f'} is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "x"
    # inside a file: it was mkdir's "[Errno 20] Not a directory" (exit 1, no flag named)
    assert main(["--quick", "--no-horizon", "--variants", "rnn", "--out", str(tmp_path / "f" / "sub")]) == 2
    assert f"--out {tmp_path / 'f' / 'sub'} is inside {tmp_path / 'f'}, a file" in capsys.readouterr().err


def test_quick_caps_a_given_batch_instead_of_replacing_it(tmp_path):
    """--quick set the analysed batch to 4 whatever --batch said (its other sizes are caps):
    --batch 2 --quick analysed 4 sequences. It caps the batch at 4 too."""
    from rnnkit.diagnostics.report import _configure

    parser = add_arguments(argparse.ArgumentParser())
    for given, want in ((["--batch", "2"], 2), ([], 4), (["--batch", "9"], 4)):
        args = parser.parse_args(["--quick", "--out", str(tmp_path / "d"), *given])
        _configure(args)
        assert args.batch == want, given


def test_summary_says_which_layer_each_line_measures(tmp_path):
    """summary.txt's gradient ratio is the top forward layer's and its step-Jacobian line layer 0's
    (the first sequence), and neither said so: a two-layer model read as one measurement."""
    out = tmp_path / "d"
    assert main(["--quick", "--no-horizon", "--out", str(out), "--variants", "lstm:num_layers=2"]) == 0
    text = (out / "summary.txt").read_text(encoding="utf-8")
    assert "loss at last step (l1):" in text and "step Jacobian (l0, sequence 0):" in text
