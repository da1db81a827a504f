"""The training rows (Trainer.history, metrics.jsonl/.csv, TensorBoard): plain numbers."""

import csv

import torch

from rnnkit.data import bptt_batches
from rnnkit.train import Trainer, read_metrics

from .models import TinyLM, tokens


def test_a_tensor_learning_rate_is_logged_as_a_float(tmp_path):
    """An optimizer whose rate is a tensor (Adam(lr=torch.tensor(...)), capturable optimizers) put
    that tensor in every training row: metrics.jsonl failed at the first row ("Object of type
    Tensor is not JSON serializable"), the CSV would have held "tensor(0.0100)" and TensorBoard
    left the rate out. The row holds its float."""
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.01), foreach=False)
    tr = Trainer(model, opt, max_steps=3, log_every=1, out_dir=str(tmp_path), progress=False, plot=False,
                 tensorboard=False)  # fmt: skip
    tr.fit(bptt_batches(tokens(100), 2, 5))
    lrs = [r["lr"] for r in tr.history]
    assert lrs == [float(opt.param_groups[0]["lr"])] * 3 and all(type(v) is float for v in lrs)
    assert [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl")] == lrs
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [float(r["lr"]) for r in csv.DictReader(f)] == lrs
