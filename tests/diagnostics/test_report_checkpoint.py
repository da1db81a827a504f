"""``rnnkit diagnose --checkpoint``: loading a training run's weights and the checkpoint-mode flags."""

from __future__ import annotations

import argparse
import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_model
from torch import nn

import rnnkit
from rnnkit.diagnostics import add_arguments, gradient_flow, load_weights, main


def test_checkpoint_mode_loads_prefixed_weights(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Linear(3, 3)
            self.rnn = rnnkit.GRU(3, 5, num_layers=2)

    torch.manual_seed(4)
    net = Net()
    ckpt = tmp_path / "run" / "step-000000010"
    ckpt.mkdir(parents=True)
    save_model(net, str(ckpt / "model.safetensors"))
    (ckpt / "state.json").write_text("{}")
    (tmp_path / "run" / "latest").write_text("step-000000010\n")

    fresh = rnnkit.GRU(3, 5, num_layers=2)
    load_weights(fresh, tmp_path / "run")  # root -> latest -> prefix "rnn." stripped
    for (n, p), q in zip(fresh.named_parameters(), net.rnn.parameters()):
        torch.testing.assert_close(p, q, msg=n)
    with pytest.raises(ValueError, match=r"weight_hh_l0: expected \(18, 6\), got \(15, 5\)"):
        load_weights(rnnkit.GRU(3, 6, num_layers=2), ckpt)
    with pytest.raises(ValueError, match="does not hold the weights"):
        load_weights(rnnkit.GRU(3, 5, num_layers=3), ckpt)
    with pytest.raises(FileNotFoundError):
        load_weights(fresh, tmp_path / "nothing")

    out = tmp_path / "diag"
    argv = ["--checkpoint", str(ckpt), "--family", "gru", "--input-size", "3", "--hidden-size", "5"]
    assert main([*argv, "--num-layers", "2", "--quick", "--out", str(out)]) == 0
    data = json.loads((out / "summary.json").read_text())
    assert list(data["snapshots"]["gru"]) == ["checkpoint"]
    # the reported gradient profile is that of the checkpoint's weights
    x = torch.randn(4, 12, 3, generator=torch.Generator().manual_seed(0))
    x = x.to(torch.get_default_dtype())
    ref = gradient_flow(net.rnn, x.transpose(0, 1)).norms["l1"]["h"]
    np.testing.assert_allclose(data["snapshots"]["gru"]["checkpoint"]["grad_norms"]["last"]["l1"]["h"], ref)
    assert (out / "activity_gru.png").is_file() and not (out / "memory_horizon.png").exists()


def test_checkpoint_mode_with_input_size_keeps_the_reverse_direction(tmp_path):
    """``--input-size`` gives the input width only: the direction count is still read off the
    weights (a bidirectional checkpoint was diagnosed as its forward half, reverse weights dropped)."""
    from rnnkit.diagnostics.checkpoint import checkpoint_layer

    torch.manual_seed(0)
    net = rnnkit.GRU(3, 5, bidirectional=True)
    save_model(net, str(tmp_path / "model.safetensors"))
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--checkpoint", str(tmp_path), "--cell", "gru", "--hidden-size", "5", "--input-size", "3"]
    )
    _, layer, note = checkpoint_layer(args)
    assert layer.bidirectional and "bidirectional" in note
    for (n, p), q in zip(layer.named_parameters(), net.parameters()):
        torch.testing.assert_close(p, q, msg=n)


@pytest.mark.parametrize("cell", ["lstm", "LSTM"])
def test_checkpoint_mode_keeps_the_stored_options_whatever_the_case_of_cell(tmp_path, cell):
    """--cell is read case-insensitively, but the run.json options were kept only for the exact
    spelling: --cell LSTM against a run of "lstm" dropped bias=False and failed to load the weights."""
    from rnnkit.diagnostics.checkpoint import checkpoint_layer

    torch.manual_seed(0)
    net = rnnkit.LSTM(3, 5, bias=False)
    save_model(net, str(tmp_path / "model.safetensors"))
    arch = {"cell": "lstm", "hidden": 5, "layers": 1, "options": {"bias": False}}
    (tmp_path / "run.json").write_text(json.dumps({"model": {"arch": arch}}))
    argv = ["--checkpoint", str(tmp_path), "--cell", cell]
    args = add_arguments(argparse.ArgumentParser()).parse_args(argv)
    v, layer, _ = checkpoint_layer(args)
    assert v.options["bias"] is False
    for (n, p), q in zip(layer.named_parameters(), net.parameters()):
        torch.testing.assert_close(p, q, msg=n)


@pytest.mark.parametrize("cell", ["lstm", "LSTM", "conv-lstm"])
def test_checkpoint_mode_keeps_a_conv_runs_options_given_its_recurrent_family(tmp_path, cell):
    """A conv-lstm run is diagnosed through its LSTM, but --cell lstm (not the run's "conv-lstm")
    dropped the stored bias=False and failed to find the layer's weights."""
    from rnnkit.arch import build_recurrent
    from rnnkit.diagnostics.checkpoint import checkpoint_layer

    torch.manual_seed(0)
    arch = {"cell": "conv-lstm", "hidden": 5, "layers": 1, "dropout": 0.0, "options": {"bias": False},
            "kernel_size": 3, "conv_channels": 4, "conv_layers": 1}  # fmt: skip
    net = build_recurrent(arch, 3)
    save_model(net, str(tmp_path / "model.safetensors"))
    (tmp_path / "run.json").write_text(json.dumps({"model": {"arch": arch}}))
    argv = ["--checkpoint", str(tmp_path), "--cell", cell]
    args = add_arguments(argparse.ArgumentParser()).parse_args(argv)
    v, layer, _ = checkpoint_layer(args)
    assert v.options["bias"] is False
    for (n, p), q in zip(layer.named_parameters(), net.rnn.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_checkpoint_mode_refuses_a_run_of_a_newer_format_version(tmp_path, capsys):
    """diagnose read run.json's model hints without the CLI's format_version check: a newer run's
    hints were used silently; the legacy format (no version) and version 1 still load."""
    from rnnkit.cli import main as rnnkit_main
    from rnnkit.diagnostics.checkpoint import find_run

    save_model(rnnkit.LSTM(3, 5), str(tmp_path / "model.safetensors"))
    arch = {"cell": "lstm", "hidden": 5, "layers": 1, "options": {}}
    for doc in ({"model": {"arch": arch}}, {"format_version": 1, "model": {"arch": arch}}):
        (tmp_path / "run.json").write_text(json.dumps(doc))
        assert find_run(tmp_path) == doc
    (tmp_path / "run.json").write_text(json.dumps({"format_version": 99, "model": {"arch": arch}}))
    with pytest.raises(ValueError, match="format_version 99, newer than"):
        find_run(tmp_path)
    code = rnnkit_main(["diagnose", "--quick", "--no-horizon", "--checkpoint", str(tmp_path), "--out",
                        str(tmp_path / "d")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "format_version 99" in err and not (tmp_path / "d").exists()  # a failure (1)


@pytest.mark.parametrize(
    "flag", [["--layers", "2"], ["--num-layers", "2"], ["--opt", "zoneout=0.1"], ["--input-size", "3"]]
)
def test_checkpoint_mode_flags_without_a_checkpoint_are_errors(tmp_path, capsys, flag):
    """--num-layers/--input-size/--option describe a checkpoint's layer; without --checkpoint they
    were silently ignored (``diagnose --layers 2`` diagnosed one-layer cells)."""
    from rnnkit.cli import main as rnnkit_main

    code = rnnkit_main(["diagnose", "--quick", "--no-horizon", "--out", str(tmp_path / "d"), *flag])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("rnnkit: error: ") and "--checkpoint" in err and "--variants" in err
    assert re.search(re.escape(flag[0]) + r"\b", err)  # the flag as typed (--layers was named --num-layers)
    assert not (tmp_path / "d").exists()


def test_a_missing_checkpoint_leaves_no_out_directory(tmp_path, capsys):
    """--out was created before the checkpoint was read: a mistyped --checkpoint left an empty
    directory behind (a bad flag left none)."""
    from rnnkit.cli import main as rnnkit_main

    out = tmp_path / "d"
    code = rnnkit_main(["diagnose", "--quick", "--checkpoint", str(tmp_path / "nope"), "--out", str(out)])
    assert code != 0 and "nope" in capsys.readouterr().err
    assert not out.exists()


def test_checkpoint_with_two_recurrent_layers_picks_one_deterministically(tmp_path):
    """A seq2seq checkpoint holds ``encoder.`` and ``decoder.`` LSTMs: which one was diagnosed
    depended on the set order of the prefixes (the hash seed: input 32 or 35 from run to run),
    and the summary did not say. Shortest then alphabetical now, named in the note; an
    ``--input-size`` that fits only the other layer loads that one (it was a shape error)."""
    from rnnkit.diagnostics.checkpoint import _prefixes, checkpoint_layer

    class Seq2Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder = rnnkit.LSTM(3, 4), rnnkit.LSTM(5, 4)

    torch.manual_seed(0)
    net = Seq2Seq()
    save_model(net, str(tmp_path / "model.safetensors"))
    parse = add_arguments(argparse.ArgumentParser()).parse_args
    _, layer, note = checkpoint_layer(parse(["--checkpoint", str(tmp_path), "--hidden-size", "4"]))
    assert layer.input_size == 5 and "the layer under 'decoder.' (also in the checkpoint: 'encoder.')" in note
    torch.testing.assert_close(layer.weight_ih_l0, net.decoder.weight_ih_l0)
    argv = ["--checkpoint", str(tmp_path), "--hidden-size", "4", "--input-size", "3"]
    _, layer, note = checkpoint_layer(parse(argv))
    assert "under 'encoder.'" in note
    torch.testing.assert_close(layer.weight_ih_l0, net.encoder.weight_ih_l0)
    names = [f"m{i}." for i in range(9, -1, -1)]  # equal lengths: the order must not be the set's
    assert _prefixes({n + "w": None for n in names}, {"w"}) == sorted(names)


def test_prefixes_are_shortest_first_and_a_root_without_latest_is_its_highest_step(tmp_path):
    """The prefix order is by length, then alphabetical (a layer saved whole before one nested in a
    model); a checkpoint root without a ``latest`` pointer means its highest ``step-*``. An
    alphabetical-only order and the lowest step each survived every test."""
    from rnnkit.diagnostics.checkpoint import _prefixes, weights_file

    names = ["model.rnn.", "decoder.", "enc.", ""]
    assert _prefixes({n + "w": None for n in names}, {"w"}) == ["", "enc.", "decoder.", "model.rnn."]
    for step in (2, 10, 7):
        d = tmp_path / f"step-{step:09d}"
        d.mkdir()
        save_model(rnnkit.GRU(1, 2), str(d / "model.safetensors"))
    assert weights_file(tmp_path) == tmp_path / "step-000000010" / "model.safetensors"


def test_a_root_without_latest_orders_its_steps_by_number(tmp_path):
    """``step-*`` folders were sorted as strings: right for the trainer's zero-padded names, but a
    hand-made ``step-10`` sorted below ``step-9`` and the older weights were loaded."""
    from rnnkit.diagnostics.checkpoint import weights_file

    for name in ("step-9", "step-10", "step-extra"):
        (tmp_path / name).mkdir()
        save_model(rnnkit.GRU(1, 2), str(tmp_path / name / "model.safetensors"))
    assert weights_file(tmp_path) == tmp_path / "step-10" / "model.safetensors"
