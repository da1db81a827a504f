"""Flag values the run cannot use, found only when the model or the data was built (status 1,
in the library's words): usage errors now, status 2, naming the flags, before the run directory
is made."""

from __future__ import annotations

import pytest

from tests.cli.conftest import TINY, assert_one_line_error

MEM = ["train", "memory", "--task", "plus1", "--length", 5, "--n-train", 32, "--n-valid", 8]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--arch", "transformer"], "unknown --arch 'transformer'"),
        (["--arch", "tcn", "--opt", "zoneout=0.1"], "takes no --opt"),
        (["--arch", "mingru", "--opt", "peephole=True"], "does not take --opt peephole"),
        (["--opt", "no_such_option=1"], "no_such_option"),
        (["--opt", "zoneout=2"], "zoneout"),
        (["--layers", "2", "--dropout", "0.2", "--opt", "dropout=0.3"], "disagree"),
    ],
)
def test_bad_architecture_flags_are_usage_errors(cli, tmp_path, flags, fragment):
    """An unknown --arch, an --opt the family does not take or a bad --opt value, and --dropout
    against --opt dropout exited 1 (found building the model, a failure at run time); they are
    bad flag values and flags that contradict each other: usage errors, status 2 (docs/cli.md)."""
    r = cli(*MEM, *flags, "--out", tmp_path / "a", *TINY)
    assert r.rc == 2
    assert_one_line_error(r, fragment)
    assert not (tmp_path / "a").exists()


def test_a_bad_arima_order_is_a_usage_error(cli, tmp_path, series_csv):
    """--arima-order 1,2 exited 1, as a failure at run time; a bad flag value is a usage error (2)."""
    argv = ["train", "forecast", "--data", series_csv, "--column", "value", "--out", tmp_path / "a", *TINY]
    r = cli(*argv, "--arima-order", "1,2")
    assert r.rc == 2
    assert_one_line_error(r, "--arima-order expects P,D,Q", "'1,2'")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (["--max-number", "100"], ["--n-train 5000", "--n-valid 500", "--max-number", "100"]),
        (["--max-number", "100", "--n-train", "90", "--n-valid", "20"], ["--max-number", "110"]),
        (["--max-number", str(10**9 + 1)], ["--max-number", "10**9"]),
    ],
)
def test_seq2seq_numbers_that_cannot_be_drawn_are_a_usage_error(cli, tmp_path, flags, fragments):
    """More train + validation pairs than --max-number has distinct numbers exited 1 with the
    library's 'need ... n_train + n_valid <= max_number', naming no flag; flags that contradict
    each other are a usage error (2) naming them."""
    r = cli("train", "seq2seq", *flags, "--out", tmp_path / "a", *TINY)
    assert r.rc == 2
    assert_one_line_error(r, *fragments)
    assert not (tmp_path / "a").exists()


def test_arith_digits_beyond_int64_are_refused_naming_them(cli, tmp_path):
    """--digits 19 died drawing the operands ('rnnkit: error: Overflow when unpacking long long',
    status 1): 10**19 is past int64. The library's arith says so naming digits; the CLI refuses
    the flag value as a usage error (2). 18 digits still work."""
    from rnnkit.tasks.memory import arith

    with pytest.raises(ValueError, match=r"digits must be in \[1, 18\].*got 19"):
        arith(2, 19)
    x, _ = arith(2, 18)
    assert x.shape == (2, 2 * 18 + 2 + 18)
    argv = ["train", "memory", "--task", "arith", "--n-train", 16, "--n-valid", 8, *TINY]
    r = cli(*argv, "--digits", 19, "--out", tmp_path / "a")
    assert r.rc == 2
    assert_one_line_error(r, "--digits", "at most 18", "got 19")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1])
def test_a_seed_out_of_torchs_range_is_a_usage_error(cli, tmp_path, seed):
    """--seed 2**64 exited 1 with torch's "Overflow when unpacking long long", naming no flag."""
    r = cli(*MEM, "--seed", seed, "--out", tmp_path / "a", *TINY)
    assert r.rc == 2
    assert_one_line_error(r, "--seed", "[-2**63, 2**64)", str(seed))
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("seed", [2**64 - 1, -(2**63)])
def test_a_seed_at_the_ends_of_the_range_trains(cli, tmp_path, seed):
    """Generated data draws its validation part from --seed + 1: 2**64 - 1 overflowed there."""
    assert cli(*MEM, "--seed", seed, "--out", tmp_path / "a", *TINY).rc == 0


@pytest.mark.parametrize("task", [["classify", "--data", "anyplus1", "--n", 20, "--length", 6], ["seq2seq"]])
def test_tcn_refuses_opt_bidirectional_naming_the_archs_that_take_it(cli, tmp_path, task):
    """--opt bidirectional=true is the docs' way to a bidirectional encoder; with --arch tcn (causal by
    construction) it was refused as any --opt, naming no arch that takes it."""
    r = cli("train", *task, "--arch", "tcn", "--opt", "bidirectional=true", "--out", tmp_path / "a", *TINY)
    assert r.rc == 2
    assert_one_line_error(r, "--arch tcn is causal", "--opt bidirectional", "lstm, gru", "conv-lstm")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("arch", ["tcn", "conv-gru"])
def test_tag_refuses_an_even_kernel_size_at_the_flag_check(cli, tmp_path, conllu, arch):
    """The tagger's centred kernels need an odd --kernel-size: 4 exited 1 at run time, in the
    convolution's words ("a centred convolution needs an odd kernel_size"), naming no flag."""
    argv = ["train", "tag", "--data", conllu, "--arch", arch, "--kernel-size", 4]
    r = cli(*argv, "--out", tmp_path / "a", *TINY)
    assert r.rc == 2
    assert_one_line_error(r, "--kernel-size must be odd", f"--arch {arch}", "got 4")
    assert not (tmp_path / "a").exists()
