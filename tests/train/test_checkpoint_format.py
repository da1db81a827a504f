"""Checkpoints: pickle-free format, tied weights, atomic writes, rotation."""

import json
import logging
import math
import pickle
import shutil

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import (
    Trainer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from rnnkit.train import checkpoint as ckpt_mod
from rnnkit.train.serialize import flatten, unflatten

from .models import TinyLM, tokens


def test_flatten_roundtrip():
    obj = {
        "state": {0: {"step": torch.tensor(3.0), "m": torch.ones(2)}, 1: {}},
        "groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0, 1], "x": None}],
        "best": math.inf,
        "nan": math.nan,
        "__tensor__": "a user key that looks like a marker",
    }
    structure, tensors = flatten(obj)
    json.dumps(structure, allow_nan=False)  # strict JSON
    back = unflatten(json.loads(json.dumps(structure)), tensors)
    assert set(back["state"]) == {0, 1} and back["groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(back["state"][0]["m"], torch.ones(2)) and back["best"] == math.inf
    assert math.isnan(back["nan"]) and back["__tensor__"] == obj["__tensor__"]
    with pytest.raises(TypeError, match="cannot serialize object at state"):
        flatten({"state": object()})


def test_save_load_model_optimizer_scheduler(tmp_path):
    torch.manual_seed(0)
    model = TinyLM(tie=True)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    x = tokens(20).view(10, 2)
    for _ in range(2):
        opt.zero_grad()
        model(x)[0].sum().backward()
        opt.step()
    sched.step(1.0)
    path = save_checkpoint(
        tmp_path, model, opt, sched, step=2, state={"h": (torch.ones(1),)}, config={"lr": 0.01}
    )
    assert sorted(f.name for f in path.iterdir()) == [
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
        "state.safetensors",
    ]

    torch.manual_seed(1)
    model2 = TinyLM(tie=True)
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.5)
    sched2 = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2)
    doc = load_checkpoint(tmp_path, model2, opt2, sched2)
    assert doc["step"] == 2 and doc["config"] == {"lr": 0.01}
    assert torch.equal(doc["state"]["h"][0], torch.ones(1))
    assert model2.out.weight is model2.emb.weight  # still tied
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for name in s1["state"][k]:
            assert torch.equal(s1["state"][k][name], s2["state"][k][name])
    assert sched2.state_dict() == sched.state_dict()


def test_weights_sharing_one_buffer_save_and_load(tmp_path):
    """On CUDA, ``flatten_parameters`` makes a recurrent layer's weights views of one cuDNN
    buffer; safetensors' ``save_model`` refuses such parts of a storage. Simulated on the CPU:
    every parameter a view of one flat tensor."""
    torch.manual_seed(0)
    model = torch.nn.LSTM(3, 4, num_layers=2)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    off = 0
    for p in model.parameters():
        p.data = flat[off : off + p.numel()].view_as(p)
        off += p.numel()
    assert len({p.untyped_storage().data_ptr() for p in model.parameters()}) == 1
    save_checkpoint(tmp_path, model, step=1)
    model2 = torch.nn.LSTM(3, 4, num_layers=2)
    load_checkpoint(tmp_path, model2)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_files_of_save_model_with_one_name_per_tied_weight_still_load(tmp_path):
    from safetensors.torch import save_model

    torch.manual_seed(0)
    model = TinyLM(tie=True)
    path = save_checkpoint(tmp_path, model, step=1)
    save_model(model, str(path / "model.safetensors"))  # the format of earlier rnnkit versions
    model2 = TinyLM(tie=True)
    load_checkpoint(tmp_path, model2)
    assert model2.out.weight is model2.emb.weight
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    save_checkpoint(tmp_path, model, opt, step=1)

    def boom(*a, **k):
        raise AssertionError("unpickling during checkpoint load")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    load_checkpoint(tmp_path, TinyLM(), torch.optim.SGD(TinyLM().parameters(), lr=0.1))


def test_rotation_latest_and_atomic_failure(tmp_path, monkeypatch):
    model = TinyLM()
    for step in range(1, 6):
        save_checkpoint(tmp_path, model, step=step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000004", "step-000000005"]
    assert (tmp_path / "latest").read_text().strip() == "step-000000005"

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, model, step=6, keep_last=2)
    # nothing half-written: no step-6, no temp dir, latest untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latest",
        "step-000000004",
        "step-000000005",
    ]
    assert latest_checkpoint(tmp_path).name == "step-000000005"
    monkeypatch.undo()
    save_checkpoint(tmp_path, model, step=5, keep_last=2)  # re-saving a step replaces it
    assert latest_checkpoint(tmp_path).name == "step-000000005"
    # without a usable `latest` pointer: the highest step, not the oldest
    (tmp_path / "latest").write_text("step-000000009\n")  # names no checkpoint
    assert latest_checkpoint(tmp_path).name == "step-000000005"
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path).name == "step-000000005"
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "nothing")


def test_rotation_after_resuming_from_an_older_checkpoint(tmp_path):
    """Rotation went by step alone: a run resumed from step 2 while steps 4 and 5 of the run it
    left were still there kept those two and removed each of its own older checkpoints, so only its
    latest survived. The steps above the one saved are rotated out first."""
    model = TinyLM()
    for step in (2, 4, 5):
        save_checkpoint(tmp_path, model, step=step, keep_last=3)
    for step in (3, 4):  # resumed from step 2: step 4 is re-saved by this run
        save_checkpoint(tmp_path, model, step=step, keep_last=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [f"step-00000000{s}" for s in (2, 3, 4)]
    save_checkpoint(tmp_path, model, step=1, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000001"]


def test_unwrap_model_sees_through_the_trainers_step_fn_module():
    """Under DDP with a step_fn the trainer wraps StepFnModule(model, step_fn) in DDP: its keys
    have a 'model.' prefix, and unwrap_model must hand back the bare model."""
    from torch import nn

    from rnnkit.train.checkpoint import unwrap_model
    from rnnkit.train.distributed import StepFnModule

    bare = nn.Linear(2, 3)
    wrapped = StepFnModule(bare, lambda m, batch, state: (m(batch).sum(), state))
    assert unwrap_model(wrapped) is bare
    assert unwrap_model(nn.DataParallel(wrapped)) is bare


def test_keep_last_none_keeps_every_checkpoint(tmp_path):
    """TrainConfig(keep_last=None) failed with a TypeError ('<' between None and int) where
    save_checkpoint takes None as keep every one."""
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_steps=4, checkpoint_every=1,
                 keep_last=None, out_dir=str(tmp_path), progress=False)  # fmt: skip
    tr.fit(bptt_batches(tokens(200), 2, 10))
    assert len(list_checkpoints(tmp_path / "checkpoints")) == 4
    with pytest.raises(ValueError, match="max_epochs must be >= 1, got None"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=None)


def test_a_latest_step_without_state_json_is_skipped_with_a_warning(tmp_path, caplog):
    """`latest` named a step whose state.json was deleted by hand: loading the root silently went
    back to the previous complete checkpoint."""
    model = TinyLM()
    for step in (2, 4):
        save_checkpoint(tmp_path, model, step=step)
    with caplog.at_level(logging.WARNING, logger="rnnkit.train"):
        assert load_checkpoint(tmp_path, TinyLM())["step"] == 4  # a sound latest: no warning
        assert not caplog.records
        (tmp_path / "step-000000004" / "state.json").unlink()
        assert load_checkpoint(tmp_path, TinyLM())["step"] == 2
    [msg] = [r.getMessage() for r in caplog.records]
    assert "latest names step-000000004, which is not a complete checkpoint" in msg
    assert msg.endswith("step-000000004/state.json); loading step-000000002 instead")


def test_no_checkpoint_names_a_stale_latest(tmp_path, caplog):
    """`latest` named a step that is gone (deleted or rotated out by hand): "no checkpoint in ROOT"
    alone read as a mistyped path. load_checkpoint and a Trainer(resume=True) say the pointer is
    stale; a root without a pointer keeps the plain message."""
    model = TinyLM()
    with pytest.raises(FileNotFoundError, match=r"expected step-\*/state.json\)$"):
        load_checkpoint(tmp_path / "nothing")
    save_checkpoint(tmp_path, model, step=5)
    (tmp_path / "step-000000005" / "state.json").unlink()  # incomplete
    with pytest.raises(FileNotFoundError, match="latest is stale: it names 'step-000000005'"):
        load_checkpoint(tmp_path, model)
    shutil.rmtree(tmp_path / "step-000000005")  # gone
    with pytest.raises(FileNotFoundError, match="latest is stale: it names 'step-000000005'"):
        load_checkpoint(tmp_path, model)
    out = tmp_path / "run"
    save_checkpoint(out / "checkpoints", model, step=3)
    shutil.rmtree(out / "checkpoints" / "step-000000003")
    with caplog.at_level(logging.WARNING, logger="rnnkit.train"):
        tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_steps=1,
                     out_dir=str(out), resume=True, progress=False)  # fmt: skip
        tr.fit(bptt_batches(tokens(50), 2, 5))
    [msg] = [r.getMessage() for r in caplog.records if "no checkpoint in" in r.getMessage()]
    assert "latest is stale: it names 'step-000000003'" in msg and msg.endswith("training from the start")


def test_an_optimizer_of_other_parameter_groups_is_refused_before_the_model_is_loaded(tmp_path):
    """torch's check of the optimizer's groups ran after the model was loaded, so a refused resume
    (another grouping, a parameter frozen since) left the checkpoint's weights in the model, and its
    error ("loaded state dict has a different number of parameter groups") named neither."""
    torch.manual_seed(0)
    model = TinyLM()
    save_checkpoint(tmp_path, model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), step=1)
    torch.manual_seed(1)
    other = TinyLM()
    before = [p.detach().clone() for p in other.parameters()]
    rest = [p for n, p in other.named_parameters() if not n.startswith("emb.")]
    opt = torch.optim.SGD([{"params": other.emb.parameters()}, {"params": rest}], lr=0.1)
    want = r"1 parameter group\(s\) of \[7\] parameters, got one of 2 group\(s\) of \[1, 6\]"
    with pytest.raises(ValueError, match=want):
        load_checkpoint(tmp_path, other, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters(), strict=True))


@pytest.mark.parametrize("step", [-1, 1.5, True])
def test_save_checkpoint_step_must_be_a_non_negative_int(tmp_path, step):
    """step=-1 wrote step--00000001, which list_checkpoints skips (the checkpoint was lost, silently),
    1.5 failed in the directory name's format ("Unknown format code 'd'"), True was saved as step 1."""
    with pytest.raises(ValueError, match=f"step must be an int >= 0, got {step!r}$"):
        save_checkpoint(tmp_path, TinyLM(), step=step)
    assert not list(tmp_path.iterdir())


def test_save_and_load_checkpoint_name_a_model_that_is_no_module(tmp_path):
    """save_checkpoint(root, None, ...) and load_checkpoint(root, 3) failed on "... object has no
    attribute 'state_dict'"."""
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got NoneType"):
        save_checkpoint(tmp_path, None, step=1)
    save_checkpoint(tmp_path, TinyLM(), step=1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got int"):
        load_checkpoint(tmp_path, 3)
