"""``--opt`` values: Python literals, and JSON's ``true`` / ``false`` / ``null`` (as diagnose reads them)."""

from __future__ import annotations

import argparse

import pytest

from rnnkit.arch import build_recurrent, parse_opt


@pytest.mark.parametrize(
    "text, want",
    [
        ("peephole=True", ("peephole", True)),
        # `--opt peephole=true` used to reach the layer as the string 'true': "peephole must be a bool"
        ("peephole=true", ("peephole", True)),
        ("coupled-gates=false", ("coupled_gates", False)),
        ("norm=null", ("norm", None)),
        ("zoneout=(0.1, 0.05)", ("zoneout", (0.1, 0.05))),
        ("norm=layer", ("norm", "layer")),
        ("variant=mut1", ("variant", "mut1")),
    ],
)
def test_parse_opt(text, want):
    assert parse_opt(text) == want
    assert type(parse_opt(text)[1]) is type(want[1])


def test_train_accepts_lowercase_bool(cli, tmp_path):
    r = cli("train", "memory", "--task", "plus1", "--length", 5, "--n-train", 32, "--n-valid", 8,
            "--opt", "peephole=true", "--max-steps", 1, "--out", tmp_path / "r")  # fmt: skip
    assert r.rc == 0, r.err


@pytest.mark.parametrize("cell", ["lstm", "conv-gru", "qrnn"])
@pytest.mark.parametrize("value", ["abc", "5", "-1", "true", "nan"])
def test_opt_dropout_is_checked_with_one_layer(cell, value):
    # with one layer the dropout is not passed to the layer (torch warns), so no one checked
    # it: `--opt dropout=abc` (the default --layers 1 of most tasks) built without a word
    key, dropout = parse_opt(f"dropout={value}")
    config = {"cell": cell, "hidden": 4, "layers": 1, "dropout": dropout, "options": {key: dropout}}
    with pytest.raises(ValueError, match=r"--opt dropout must be a number in \[0, 1\], got"):
        build_recurrent(config, 3)


@pytest.mark.parametrize("text", ["=1", " =True", "=(0.1, 0.05)"])
def test_opt_without_a_key_is_refused_where_it_is_parsed(text):
    # it reached the layer as an option named '' ("does not take --opt ;" for the parallel layers)
    with pytest.raises(argparse.ArgumentTypeError, match="--opt expects key=value, got no key"):
        parse_opt(text)


@pytest.mark.parametrize("cell", ["lstm", "gru", "qrnn"])
@pytest.mark.parametrize("text", ["zoneout=1e999", "zoneout=-0.5"])
def test_a_bad_opt_value_names_the_flag(cell, text):
    # the layer's own words named the option alone ("zoneout must be a number in [0, 1], got inf"),
    # where every other flag's error names its flag
    key, value = parse_opt(text)
    config = {"cell": cell, "hidden": 4, "layers": 1, "dropout": 0.0, "options": {key: value}}
    want = rf"^--arch {cell}: --opt zoneout must be a number in \[0, 1[\])], got"
    with pytest.raises(ValueError, match=want):
        build_recurrent(config, 3)


def test_a_bad_opt_value_names_the_flag_on_the_command_line(cli, tmp_path):
    r = cli("train", "memory", "--task", "plus1", "--length", 5, "--n-train", 32, "--n-valid", 8,
            "--opt", "zoneout=1e999", "--max-steps", 1, "--out", tmp_path / "r")  # fmt: skip
    assert r.rc == 2 and "--opt zoneout must be a number in [0, 1], got inf" in r.err, r.err  # a usage error
