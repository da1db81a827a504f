"""``save_best``: the weights of the best validation in ``out_dir/best`` (Keras's ModelCheckpoint
with ``save_best_only``, Lightning's best checkpoint)."""

import shutil

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import Callback, TrainConfig, Trainer, load_checkpoint

from .models import TinyLM, tokens


def _run(out, losses, max_steps, load=None, **kw):
    """A trainer whose validations return ``losses`` in turn (one every step); the weights after
    each step, as validated, in the returned list. ``load``: a checkpoint it loads before fit()."""
    torch.manual_seed(0)
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), out_dir=out, save_best=True, val_every=1,
                 max_steps=max_steps, max_epochs=10, progress=False, plot=False, tensorboard=False,
                 **kw)  # fmt: skip
    scripted = iter(losses)
    tr.evaluate = lambda data: {"loss": next(scripted), "ppl": 1.0, "tokens": 1}
    snaps = []

    class Snap(Callback):
        def on_step_end(self, trainer, logs):
            snaps.append({k: v.clone() for k, v in model.state_dict().items()})

    tr.callbacks.append(Snap())
    if load is not None:
        tr.load(load)
    tr.fit(bptt_batches(tokens(200), 2, 5), val_data=[None])
    return tr, snaps


def _best(tr):
    model = TinyLM()
    doc = load_checkpoint(tr.best_dir, model)
    return doc, model.state_dict()


def test_best_holds_the_weights_of_the_best_validation(tmp_path):
    tr, snaps = _run(tmp_path, [3.0, 2.0, 2.5, 1.5, 1.8, 1.6], max_steps=6)
    doc, weights = _best(tr)
    assert doc["step"] == 4 and doc["state"] == {"val_loss": 1.5, "epoch": 0}
    for k, v in weights.items():
        assert torch.equal(v, snaps[3][k]), k
    assert len(list((tmp_path / "best").glob("step-*"))) == 1  # the best only


def test_min_delta_decides_as_for_early_stopping(tmp_path):
    """A validation counts as the new best when early stopping counts it as an improvement."""
    tr, _ = _run(tmp_path, [3.0, 2.95, 2.0], max_steps=3, min_delta=0.1)
    assert load_checkpoint(tr.best_dir)["step"] == 3
    tr, _ = _run(tmp_path / "b", [3.0, 2.95, 2.92], max_steps=3, min_delta=0.1)
    assert load_checkpoint(tr.best_dir)["step"] == 1


@pytest.mark.parametrize("save_best", [True, False])
def test_a_new_run_drops_the_best_of_an_earlier_one(tmp_path, save_best):
    """The best of an earlier run in the same out_dir is not this run's: it goes at the start
    (this run, stopped before its first validation at the epoch's end, has none), with save_best
    or without (one without left it, and load_checkpoint(best_dir) gave the earlier run's weights).
    (The earlier run's checkpoints are deleted first: a new run refuses an out_dir holding some.)"""
    _run(tmp_path, [1.0], max_steps=1)
    assert (tmp_path / "best").is_dir()
    shutil.rmtree(tmp_path / "checkpoints")
    torch.manual_seed(0)
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), out_dir=tmp_path, save_best=save_best,
                 max_steps=2, progress=False, plot=False, tensorboard=False)  # fmt: skip
    tr.fit(bptt_batches(tokens(200), 2, 5), bptt_batches(tokens(50), 1, 5))  # 20 batches an epoch
    assert not (tmp_path / "best").exists() and not list(tmp_path.glob(".old-best-*"))


def test_a_resumed_run_keeps_its_best_until_it_does_better(tmp_path):
    tr, snaps = _run(tmp_path, [2.0, 1.0, 1.5], max_steps=3, checkpoint_every=1)
    # resumed from step 3: its best (1.0 at step 2) goes on; 1.2 is worse, 0.9 better
    tr2, _ = _run(tmp_path, [1.2], max_steps=4, resume=True)
    assert tr2.best_val == 1.0 and load_checkpoint(tr2.best_dir)["step"] == 2
    tr3, snaps3 = _run(tmp_path, [0.9], max_steps=5, resume=True)
    doc, weights = _best(tr3)
    assert doc["step"] == 5 and doc["state"]["val_loss"] == 0.9
    assert all(torch.equal(v, snaps3[-1][k]) for k, v in weights.items())


def test_going_on_from_an_older_checkpoint_drops_the_best_of_the_branch_left(tmp_path):
    """After load(an older checkpoint of out_dir) and fit(), best/ kept the abandoned branch's best
    (step 4), which the loaded best_val (1.0, of step 2) did not know: a worse validation of the new
    branch then left it there, named the run's best. Its weights are not this run's: it goes; one
    at or before the loaded step stays."""
    _run(tmp_path, [3.0, 1.0, 2.0, 0.5], max_steps=4, checkpoint_every=1, keep_last=None)
    assert load_checkpoint(tmp_path / "best")["step"] == 4
    tr, _ = _run(tmp_path, [1.5], max_steps=3, load=tmp_path / "checkpoints" / "step-000000002")
    assert tr.best_val == 1.0 and not (tmp_path / "best").exists() and not list(tmp_path.glob(".old-*"))
    tr, _ = _run(tmp_path, [0.7], max_steps=3, load=tmp_path / "checkpoints" / "step-000000002")
    assert load_checkpoint(tmp_path / "best")["step"] == 3  # a best of this branch
    tr, _ = _run(tmp_path, [], max_steps=3, resume=True)  # the finished run: at step 3, best/ stays
    assert load_checkpoint(tmp_path / "best")["step"] == 3


def test_best_of_an_averaged_run_is_the_average_it_validated(tmp_path):
    """With NT-ASGD triggered, validation sees the averaged weights: those are the best's."""
    tr, _ = _run(tmp_path, [2.0, 3.0, 2.5, 1.0], max_steps=4, nt_asgd=True, nonmono=1)
    assert tr.ntasgd.triggered_at == 3
    _, weights = _best(tr)  # fit() ended at the best step, with the average applied
    for k, v in tr.raw_model.state_dict().items():
        assert torch.equal(v, weights[k]), k


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"save_best": True}, r"save_best=True needs out_dir \(where out_dir/best goes\), got None"),
        ({"save_best": 1, "out_dir": "x"}, "save_best must be a bool, got 1"),
    ],
)
def test_bad_save_best(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_save_best_without_out_dir_says_so():
    """Trainer.save_best(val_loss) called by hand without out_dir: a TypeError of pathlib before."""
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), progress=False)
    with pytest.raises(ValueError, match=r"save_best needs out_dir \(where out_dir/best goes\), got None"):
        tr.save_best(1.0)
