"""``rnnkit diagnose`` with the parallel layers: the comparison with LSTM, ``--cell``, and
checkpoint mode reading the architecture from the training run's ``run.json``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_model
from torch import nn

import rnnkit
from rnnkit.diagnostics import checkpoint_layer, gradient_flow, main


def test_lstm_vs_mingru_comparison(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["--quick", "--no-horizon", "--out", str(out), "--variants", "lstm", "mingru", "lru"]) == 0
    text = capsys.readouterr().out
    assert "decay a_t = 1 − z (l0)" in text and "decay a_t = λ (l0)" in text
    assert "power iteration on lstm" in text
    for name in ("gradient_flow", "eigenvalues", "jacobian_spectrum", "activity_mingru", "activity_lru"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    snaps = json.loads((out / "summary.json").read_text())["snapshots"]
    h = np.array(snaps["mingru"]["trained"]["grad_norms"]["last"]["l0"]["h"])
    assert h.shape == (12,) and np.all(h > 0) and h[0] < h[-1]  # a last-step loss decays backwards
    q = snaps["mingru"]["init"]["decay_modulus_quantiles"]["l0"]
    assert 0 < q[0] <= q[1] <= q[2] < 1 and snaps["lstm"]["init"]["decay_modulus_quantiles"] is None


def test_cell_flag_and_only_parallel_layers(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["--quick", "--no-horizon", "--out", str(out), "--cell", "qrnn"]) == 0
    text = capsys.readouterr().out
    assert "‖∂L/∂c_0‖" in text and "power iteration: skipped" in text
    assert not (out / "power_iteration.png").exists()
    assert list(json.loads((out / "summary.json").read_text())["snapshots"]) == ["qrnn"]
    assert (
        main(["--quick", "--out", str(out), "--cell", "qrnn", "--variants", "lstm"]) == 2
    )  # a usage error (it was SystemExit: argparse's)
    assert "not both" in capsys.readouterr().err


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 3)
        self.encoder = rnnkit.MinLSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)


def _run_dir(tmp_path, arch: dict) -> tuple[Tagger, object]:
    torch.manual_seed(3)
    net = Tagger()
    root = tmp_path / "run"
    step = root / "checkpoints" / "step-000000004"
    step.mkdir(parents=True)
    save_model(net, str(step / "model.safetensors"))
    (root / "checkpoints" / "latest").write_text("step-000000004\n")
    (root / "run.json").write_text(json.dumps({"task": "tag", "model": {"arch": arch, "embedding_dim": 3}}))
    return net, root


def test_checkpoint_mode_reads_run_json(tmp_path):
    arch = {"cell": "minlstm", "hidden": 5, "layers": 2, "dropout": 0.0, "options": {}}
    net, root = _run_dir(tmp_path, arch)
    out = tmp_path / "d"
    assert main(["--checkpoint", str(root), "--quick", "--out", str(out)]) == 0  # no architecture flags
    text = (out / "summary.txt").read_text()
    assert "minlstm, input 3, hidden 5, 2 layer(s), bidirectional (architecture from run.json)" in text
    data = json.loads((out / "summary.json").read_text())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 12, 3, generator=g)  # what checkpoint mode feeds a 3-feature layer
    ref = gradient_flow(net.encoder.eval(), x)
    got = data["snapshots"]["minlstm"]["checkpoint"]["grad_norms"]["last"]
    for label in ("l0", "l0_reverse", "l1", "l1_reverse"):
        np.testing.assert_allclose(got[label]["h"], ref.norms[label]["h"], rtol=1e-10)


def test_checkpoint_flags_override_run_json(tmp_path):
    arch = {"cell": "minlstm", "hidden": 5, "layers": 2, "options": {}}
    net, root = _run_dir(tmp_path, arch)

    class A:  # the parsed flags checkpoint_layer reads
        checkpoint, family, hidden_size, num_layers, input_size, option = root, None, None, None, None, []

    v, m, note = checkpoint_layer(A)
    assert type(m) is rnnkit.MinLSTM and m.bidirectional and not m.training and "run.json" in note
    torch.testing.assert_close(m.weight_ih_l1_reverse, net.encoder.weight_ih_l1_reverse)
    A.num_layers = 1  # the first layer alone is in the checkpoint too
    assert checkpoint_layer(A)[1].num_layers == 1
    A.hidden_size = 6
    with pytest.raises(ValueError, match=r"weight_ih_l0: expected \(18, 3\), got \(15, 3\)"):
        checkpoint_layer(A)
    A.hidden_size, A.family = None, "gru"
    with pytest.raises(ValueError, match="holds no gru layer"):
        checkpoint_layer(A)
    A.family = "tcn"
    with pytest.raises(ValueError, match="TCN"):
        checkpoint_layer(A)


def test_diagnose_a_run_of_the_training_cli(tmp_path, capsys):
    """The bug of issue #7: ``rnnkit diagnose --checkpoint`` after ``rnnkit train`` needs no flags."""
    from rnnkit.cli import main as cli

    run = tmp_path / "run"
    argv = ["train", "memory", "--task", "adding", "--length", "6", "--n-train", "16", "--n-valid", "8",
            "--cell", "qrnn", "--opt", "window=2", "--hidden", "6", "--layers", "2", "--max-steps", "2",
            "--batch-size", "8", "--no-progress", "--out", str(run)]  # fmt: skip
    assert cli(argv) == 0
    assert cli(["diagnose", "--checkpoint", str(run), "--quick", "--out", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    assert "qrnn, input 2, hidden 6, 2 layer(s) (architecture from run.json)" in text
    assert "decay a_t = f (l0)" in text
