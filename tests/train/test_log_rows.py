"""The training rows (Trainer.history, metrics.jsonl/.csv, TensorBoard): plain numbers."""

import csv
import functools
import sys
import types

import numpy as np
import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import Callback, TensorBoardLogger, Trainer, lm_loss, read_metrics
from rnnkit.train.state import is_nll_loss

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


def test_tensorboard_logs_numpy_and_tensor_scalars_as_floats(tmp_path, monkeypatch):
    """A callback's metric given as a numpy scalar or a 0-d tensor was left out of TensorBoard
    without a word (only Python's int and float were taken): it is logged as a float; a str,
    None and a tensor of more than one value have no curve and are left out as before."""
    shown = []

    class SummaryWriter:  # torch.utils.tensorboard's (tensorboard may not be installed)
        def __init__(self, log_dir, purge_step=None): ...

        def add_scalar(self, tag, value, step):
            shown.append((tag, step, value))

        def flush(self): ...

        def close(self): ...

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter)
    )

    class Metrics(Callback):  # before the logger: its values are in the row the logger gets
        def on_log(self, trainer, logs):
            logs.update(f32=np.float32(0.5), i64=np.int64(3), t=torch.tensor(0.25), t2=torch.ones(2),
                        name="x", none=None)  # fmt: skip

    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), max_steps=1, log_every=1,
                 callbacks=[Metrics(), TensorBoardLogger(tmp_path)], progress=False)  # fmt: skip
    tr.fit(bptt_batches(tokens(100), 2, 5))
    got = {tag: v for tag, step, v in shown if step == 1}
    assert {k: got.get(f"train/{k}") for k in ("f32", "i64", "t")} == {"f32": 0.5, "i64": 3.0, "t": 0.25}
    assert all(type(v) is float for v in got.values())
    assert not {"train/t2", "train/name", "train/none"} & got.keys()
    assert got["train/lr"] == 0.5 and "train/seq_len" in got


def test_numpy_and_tensor_metrics_of_a_callback_reach_the_files_as_numbers(tmp_path):
    """A callback's metric given as a numpy scalar or a 0-d tensor (``acc.mean()``) made
    metrics.jsonl fail at its row ("Object of type float32 is not JSON serializable") and the
    checkpoint's history with it, ending the run: the files hold the numbers, the resumed
    history as well."""

    class Metrics(Callback):
        def on_log(self, trainer, logs):
            logs.update(f32=np.float32(0.5), i64=np.int64(3), t=torch.tensor(0.25), nan=np.float64("nan"))

    torch.manual_seed(0)
    model = TinyLM()
    kw = dict(max_steps=4, log_every=2, checkpoint_every=2, out_dir=str(tmp_path), progress=False, plot=False,
              tensorboard=False)  # fmt: skip
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), callbacks=[Metrics()], **kw)
    tr.fit(bptt_batches(tokens(100), 2, 5))
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert [(r["f32"], r["i64"], r["t"]) for r in rows] == [(0.5, 3, 0.25)] * 2
    assert all(np.isnan(r["nan"]) for r in rows)
    again = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), **kw)
    again.load(tmp_path / "checkpoints")
    got = [(r["f32"], r["i64"], r["t"]) for r in again.history if r["split"] == "train"]
    assert got == [(0.5, 3, 0.25)] * 2


class _Regression(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).squeeze(-1)


def _regression_trainer(tmp_path, **kw) -> Trainer:
    model = _Regression()
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), loss_fn=torch.nn.functional.mse_loss,
                   stateful=False, carry_state=False, log_every=1, out_dir=str(tmp_path), progress=False,
                   plot=False, tensorboard=False, **kw)  # fmt: skip


def test_ppl_only_for_a_negative_log_likelihood(tmp_path):
    """Every row had a "ppl", exp(loss), also for a regression trained with MSE (a loss of 128
    logged 5e55): a perplexity only where the loss is a negative log-likelihood."""
    torch.manual_seed(0)
    data = [(torch.randn(4, 3), 10 * torch.randn(4)) for _ in range(2)]
    tr = _regression_trainer(tmp_path / "mse")
    tr.fit(data, data)
    assert [r["split"] for r in tr.history] == ["train", "train", "val"]
    assert not any("ppl" in r for r in tr.history) and "ppl" not in tr.evaluate(data)
    assert not any("ppl" in r for r in read_metrics(tmp_path / "mse" / "metrics.jsonl"))
    with open(tmp_path / "mse" / "metrics.csv", newline="") as f:
        assert [r["ppl"] for r in csv.DictReader(f)] == ["", "", ""]
    # the default loss (token cross-entropy) keeps it, and a step_fn's NLL says so
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), max_steps=1, log_every=1, progress=False)
    assert tr.perplexity and not _regression_trainer(tmp_path / "x", perplexity=False).perplexity
    for bad in (1, 0.0, "yes"):  # 1 and 0.0 were taken as True and False
        with pytest.raises(ValueError, match=rf"perplexity must be a bool or None, got {bad!r}"):
            _regression_trainer(tmp_path / "y", perplexity=bad)
    tr.fit(bptt_batches(tokens(100), 2, 5))
    assert np.isclose(tr.history[0]["ppl"], np.exp(tr.history[0]["loss"]))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    assert Trainer(model, opt, loss_fn=torch.nn.CrossEntropyLoss()).perplexity
    assert not Trainer(model, opt, step_fn=lambda m, b, s: (0, s)).perplexity


def test_ppl_by_default_only_for_a_plain_mean_negative_log_likelihood():
    """A cross-entropy with label smoothing or class weights was taken for an NLL (its exp logged as a
    "ppl": smoothing adds the smoothed targets' entropy), and a partial of F.cross_entropy with an
    ignore_index, a plain NLL, was not."""
    ce, nll = torch.nn.functional.cross_entropy, torch.nn.functional.nll_loss
    known = [lm_loss, ce, nll, torch.nn.CrossEntropyLoss(ignore_index=0), torch.nn.NLLLoss(),
             functools.partial(ce, ignore_index=0), functools.partial(nll, reduction="mean")]  # fmt: skip
    other = [torch.nn.CrossEntropyLoss(label_smoothing=0.1), torch.nn.CrossEntropyLoss(weight=torch.ones(3)),
             torch.nn.NLLLoss(weight=torch.ones(3)), torch.nn.CrossEntropyLoss(reduction="sum"),
             functools.partial(ce, label_smoothing=0.1), functools.partial(ce, reduction="sum"),
             functools.partial(ce, weight=torch.ones(3)), functools.partial(ce, size_average=False),
             functools.partial(ce, torch.zeros(2, 3)), torch.nn.functional.mse_loss]  # fmt: skip
    assert [is_nll_loss(f) for f in known] == [True] * len(known)
    assert [is_nll_loss(f) for f in other] == [False] * len(other)
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    assert not Trainer(model, opt, loss_fn=torch.nn.CrossEntropyLoss(label_smoothing=0.1)).perplexity
