"""Trainer.history in checkpoints (rnnkit/train/historylog.py): each row written once, a
checkpoint's history read back exactly, old checkpoints (the rows in state.json) still loading."""

import json
import math
import shutil

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import Trainer, list_checkpoints
from rnnkit.train import historylog as hl

from .models import TinyLM, tokens


def _trainer(out, steps, **kw):
    torch.manual_seed(0)
    model = TinyLM()
    cfg = {"max_steps": steps, "max_epochs": 10, "log_every": 1, "val_every": 2, "checkpoint_every": 1}
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), out_dir=str(out), keep_last=None,
                   progress=False, plot=False, tensorboard=False, **{**cfg, **kw})  # fmt: skip


def _fit(tr):
    return tr.fit(bptt_batches(tokens(300), 2, 5), bptt_batches(tokens(40, seed=3), 1, 5))


def _untimed(history):  # the rows less their clock readings, which differ from run to run
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in history]


def _load(ckpt):
    tr = _trainer(ckpt.parent.parent / "elsewhere", 1)
    tr.load(ckpt)
    return tr.history


def test_each_row_is_written_once_not_at_every_checkpoint(tmp_path, monkeypatch):
    """Every checkpoint's state.json held the whole history, rewritten (and re-encoded: ~570 bytes a
    row) at every checkpoint: a long run's checkpoints grew with it, their writes with the square of
    its length (100k steps logged every 10: 6.2 MB and ~0.6 s a checkpoint). state.json keeps a
    constant size now, and each row is encoded once, appended to the run's history.jsonl."""
    encoded = []
    line = hl._line
    monkeypatch.setattr(hl, "_line", lambda row: encoded.append(row["step"]) or line(row))
    tr = _trainer(tmp_path, 12)
    _fit(tr)
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert len(ckpts) == 12 and len(tr.history) == 18  # 12 training rows, 6 validations
    sizes = [(c / "state.json").stat().st_size for c in ckpts]
    assert max(sizes) - min(sizes) < 100, sizes  # (the digits of the counters)
    assert sorted(encoded) == sorted(r["step"] for r in tr.history)
    for c in ckpts:  # each checkpoint's own rows, read back exactly
        step = int(c.name.removeprefix("step-"))
        assert _load(c) == [r for r in tr.history if r["step"] <= step]


def test_a_resumed_run_has_the_history_of_the_one_that_never_stopped(tmp_path):
    ref = _trainer(tmp_path / "ref", 9)
    _fit(ref)
    _fit(_trainer(tmp_path / "cut", 5))
    tr = _trainer(tmp_path / "cut", 9, resume=True)
    _fit(tr)
    assert _untimed(tr.history) == _untimed(ref.history) and tr.losses == ref.losses
    assert _load(tmp_path / "cut" / "checkpoints" / "step-000000009") == tr.history


def test_non_finite_values_and_extra_keys_come_back(tmp_path):
    tr = _trainer(tmp_path, 2)
    _fit(tr)
    tr.history.append({"split": "train", "step": 2, "loss": math.nan, "ppl": math.inf, "seq_len": None,
                       "nt_asgd_triggered": True, "a/b": -math.inf, "n": 3})  # fmt: skip
    tr.save()
    back = _load(tmp_path / "checkpoints" / "step-000000002")
    assert back[:-1] == tr.history[:-1]
    row = back[-1]
    assert math.isnan(row.pop("loss")) and row == {k: v for k, v in tr.history[-1].items() if k != "loss"}
    assert type(row["n"]) is int and row["seq_len"] is None and row["nt_asgd_triggered"] is True


def test_a_branch_from_an_older_checkpoint_leaves_the_newer_ones_their_rows(tmp_path):
    """Loading an older checkpoint of out_dir and training on writes other rows after it: the
    newer checkpoints (kept until keep_last rotates them) still read their own, and the branch its own."""
    tr = _trainer(tmp_path, 6)
    _fit(tr)
    root = tmp_path / "checkpoints"
    before = {c.name: _load(c) for c in list_checkpoints(root)}
    branch = _trainer(tmp_path, 4)
    branch.load(root / "step-000000003")
    for g in branch.optimizer.param_groups:
        g["lr"] = 0.1  # another branch: other losses from step 4 on
    _fit(branch)  # (its checkpoint of step 4 replaces the old one)
    for name in ("step-000000005", "step-000000006"):
        assert _load(root / name) == before[name]
    assert _load(root / "step-000000004") == branch.history != before["step-000000004"]
    assert branch.history[: len(before["step-000000003"])] == before["step-000000003"]


def test_rows_a_crash_left_after_a_checkpoint_are_not_its_own(tmp_path):
    """A kill while rows were appended for the next checkpoint leaves them (part of a line, say)
    after the latest one's: a resume reads its own bytes, and writes a file of its own next."""
    ref = _trainer(tmp_path / "ref", 6)
    _fit(ref)
    _fit(_trainer(tmp_path, 4))
    latest = tmp_path / "checkpoints" / "step-000000004" / "history.jsonl"
    with open(latest, "ab") as f:
        f.write(b'{"split": "train", "st')
    tr = _trainer(tmp_path, 6, resume=True)
    _fit(tr)
    assert _load(tmp_path / "checkpoints" / "step-000000006") == tr.history
    assert _untimed(tr.history) == _untimed(ref.history)


def test_a_copied_checkpoint_directory_holds_its_rows(tmp_path):
    tr = _trainer(tmp_path / "run", 4)
    _fit(tr)
    ckpt = tmp_path / "run" / "checkpoints" / "step-000000002"
    want = _load(ckpt)
    shutil.copytree(ckpt, tmp_path / "copy" / "step-000000002")
    shutil.rmtree(tmp_path / "run")
    assert _load(tmp_path / "copy" / "step-000000002") == want


def test_checkpoints_of_before_with_the_rows_in_state_json_still_load(tmp_path):
    tr = _trainer(tmp_path, 4)
    _fit(tr)
    ckpt = tmp_path / "checkpoints" / "step-000000004"
    doc = json.loads((ckpt / "state.json").read_text())
    items = dict(doc["state"]["__dict__"])
    del items["history_file"]
    items["history"] = [{"__dict__": [[k, v] for k, v in r.items()]} for r in tr.history]
    doc["state"]["__dict__"] = [[k, v] for k, v in items.items()]
    (ckpt / "state.json").write_text(json.dumps(doc))
    (ckpt / "history.jsonl").unlink()
    again = _trainer(tmp_path, 6, resume=True)
    _fit(again)  # its first checkpoint writes all the rows anew
    assert again.history[: len(tr.history)] == tr.history
    assert _load(tmp_path / "checkpoints" / "step-000000006") == again.history


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_history_file_is_named(tmp_path, damage):
    _fit(_trainer(tmp_path, 2))
    path = tmp_path / "checkpoints" / "step-000000002" / "history.jsonl"
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="history.jsonl"):
        _load(path.parent)


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_history_file_loads_nothing(tmp_path, damage):
    """Trainer.load read history.jsonl after the weights, the optimizer and the counters were
    loaded: a missing or damaged file was named, but left a trainer half of the checkpoint's, half
    its own. It is read before anything is loaded now, as the checkpoint's other files."""
    _fit(_trainer(tmp_path / "run", 4))
    path = tmp_path / "run" / "checkpoints" / "step-000000002" / "history.jsonl"
    data = path.read_bytes()  # (the run's rows: step 2's are its first half)
    path.unlink() if damage == "missing" else path.write_bytes(data[: len(data) // 3])
    tr = _trainer(tmp_path / "other", 3)
    _fit(tr)
    weights, step, history, losses = [p.detach().clone() for p in tr.model.parameters()], tr.step, \
        list(tr.history), list(tr.losses)  # fmt: skip
    with pytest.raises(ValueError, match="history.jsonl"):
        tr.load(path.parent)
    assert all(torch.equal(a, b) for a, b in zip(weights, tr.model.parameters(), strict=True))
    assert (tr.step, tr.history, tr.losses) == (step, history, losses)
