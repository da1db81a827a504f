"""Early stopping and the best weights from the command line: ``--patience``, ``--save-best``,
the run's ``best/`` used by ``sample``/``eval``/``predict``/``diagnose``, and ``--resume`` with them."""

from __future__ import annotations

import torch

from rnnkit.cli.common import load_model_weights
from rnnkit.tasks import classify as C
from rnnkit.train import save_checkpoint

from .conftest import TINY


def _classifier(run: dict) -> torch.nn.Module:
    return C.classifier(run["model"]["arch"], len(run["classes"]), {k: v for k, v in run["model"].items()
                                                                    if k != "arch"})  # fmt: skip


def test_checkpoint_naming_the_best_root_loads_it(cli, tmp_path, text_csv):
    """``--checkpoint RUN/best`` (a checkpoint root, as ``RUN/checkpoints``) silently loaded the
    run's latest weights: only a ``step-*`` directory was taken as given."""
    import json

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
