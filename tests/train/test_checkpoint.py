"""Checkpoints: pickle-free format, atomic writes, rotation, exact resume."""

import json
import math
import pickle

import pytest
import torch
from torch.utils.data import DataLoader

from rnnkit.data import PadCollate, bptt_batches
from rnnkit.train import (
    Callback,
    Trainer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
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


class Interrupt(Callback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, trainer, logs):
        if trainer.step == self.at:
            raise KeyboardInterrupt


def _lm_run(out_dir, interrupt_at=None, resume=False, init_seed=0):
    """Dropout + variable-length windows from the global RNG + Adam + scheduler + val."""
    seed_everything(init_seed)
    model = TinyLM(dropout=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.7)
    cbs = [Interrupt(interrupt_at)] if interrupt_at else []
    tr = Trainer(
        model,
        opt,
        scheduler=sched,
        out_dir=str(out_dir),
        checkpoint_every=5,
        val_every=4,
        max_epochs=2,
        resume=resume,
        callbacks=cbs,
        log_every=3,
        clip_norm=0.5,
        progress=False,
        plot=False,
    )
    data = bptt_batches(tokens(600), 3, 12, variable_length=True, min_len=4, std=3)
    if interrupt_at:
        with pytest.raises(KeyboardInterrupt):
            tr.fit(data, bptt_batches(tokens(60, seed=9), 1, 12))
    else:
        tr.fit(data, bptt_batches(tokens(60, seed=9), 1, 12))
    return tr, model


def test_resume_gives_the_same_losses(tmp_path):
    ref, ref_model = _lm_run(tmp_path / "ref")
    assert ref.step > 25 and ref.epoch == 2
    _lm_run(tmp_path / "run", interrupt_at=23)  # killed 3 steps after the step-20 checkpoint
    # resumed in a "new process": other init, other global RNG
    res, res_model = _lm_run(tmp_path / "run", resume=True, init_seed=123)
    assert res.losses == ref.losses  # bit-exact
    assert res.tokens_seen == ref.tokens_seen  # the counter carries on from the checkpoint's
    timing = ("tokens_per_s", "elapsed_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(res.history) == strip(ref.history)
    for a, b in zip(ref_model.parameters(), res_model.parameters(), strict=True):
        assert torch.equal(a, b)
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    ref_steps = [
        json.loads(line)["step"] for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == ref_steps  # redone steps were not logged twice


def loader_run(out_dir, interrupt_at=None, resume=False, epochs=3, loader_seed=None):
    """A shuffled DataLoader run, 7 batches an epoch, a checkpoint every 4 steps, stopped by a
    KeyboardInterrupt at ``interrupt_at``. The order comes from the global RNG, or with
    ``loader_seed`` from the loader's own generator (PyTorch's reproducibility recipe); a resume
    runs as in another process, with another global RNG."""
    seed_everything(0 if not resume else 99)
    torch.manual_seed(0)  # same init; the data order must come from the checkpoint
    seqs = [tokens(n, seed=n) for n in range(5, 30)]
    ds = [(s[:-1], s[1:]) for s in seqs]
    g = torch.Generator().manual_seed(loader_seed) if loader_seed is not None else None
    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=PadCollate(), generator=g)
    model = TinyLM(dropout=0.2)
    cbs = [Interrupt(interrupt_at)] if interrupt_at else []
    tr = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.3),
        out_dir=str(out_dir),
        checkpoint_every=4,
        carry_state=False,
        max_epochs=epochs,
        resume=resume,
        callbacks=cbs,
        progress=False,
        plot=False,
    )
    return _fit(tr, loader, interrupt_at)


def _fit(tr, data, interrupt_at):
    """``tr.fit(data)``, expected to stop on the ``Interrupt`` callback's KeyboardInterrupt when
    ``interrupt_at`` is set; returns ``tr``."""
    if interrupt_at:
        with pytest.raises(KeyboardInterrupt):
            tr.fit(data)
    else:
        tr.fit(data)
    return tr


def test_resume_shuffled_dataloader_mid_epoch(tmp_path):
    ref = loader_run(tmp_path / "ref")
    loader_run(tmp_path / "run", interrupt_at=11)  # checkpoint at 8, inside epoch 2
    res = loader_run(tmp_path / "run", resume=True)
    assert res.step == ref.step == 21 and res.losses == ref.losses


def _finished_run(out_dir, **kw):
    """A run resumed with the same settings: the trainer, its result and its checkpoint names."""
    torch.manual_seed(0)
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=kw.pop("lr", 0.5)), out_dir=str(out_dir),
                 resume=True, progress=False, plot=False, **kw)  # fmt: skip
    out = tr.fit(bptt_batches(tokens(200), 2, 5), bptt_batches(tokens(50), 1, 5))
    return tr, out, [p.name for p in list_checkpoints(out_dir / "checkpoints")]


@pytest.mark.parametrize(
    ("kw", "step", "reason"),
    [
        ({"max_steps": 4, "max_epochs": 3}, 4, "max_steps"),
        ({"max_minutes": 1e-9, "max_epochs": 3}, 1, "max_minutes"),
        # lr 0: the validation loss never improves; patience 2 stops at the 3rd validation
        ({"lr": 0.0, "val_every": 1, "patience": 2, "max_epochs": 3}, 3, "early_stopping"),
    ],
)
def test_resuming_a_finished_run_trains_no_further(tmp_path, kw, step, reason):
    first, out, ckpts = _finished_run(tmp_path, **kw)
    assert (out["step"], out["stop_reason"]) == (step, reason)
    written = (tmp_path / "checkpoints" / ckpts[0]).stat().st_ino
    for _ in range(2):  # e.g. a job scheduler relaunching the completed job with resume=True
        again, out, ckpts_again = _finished_run(tmp_path, **kw)
        assert (out["step"], out["stop_reason"]) == (step, reason)
        assert again.losses == first.losses and ckpts_again == ckpts == [f"step-{step:09d}"]
        # the step it loaded is not written again (a re-save replaces the directory)
        assert (tmp_path / "checkpoints" / ckpts[0]).stat().st_ino == written
    # a larger budget extends the finished run
    kw.pop("patience", None)
    _, out, _ = _finished_run(tmp_path, **{**kw, "max_steps": step + 2, "max_minutes": None})
    assert out["step"] == step + 2


def epoch_run(out_dir, epochs):
    """A resumable run of 10 batches per epoch, checkpointed every 10 steps (at each epoch's end)
    and validated at each epoch's end (also tests/train/test_crash.py)."""
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tr = Trainer(model, opt, max_epochs=epochs, checkpoint_every=10, log_every=5, out_dir=str(out_dir),
                 resume=True, progress=False, plot=False)  # fmt: skip
    tr.fit(bptt_batches(tokens(200), 2, 10), bptt_batches(tokens(50), 1, 10))


def test_resume_at_an_epoch_end_logs_each_row_once(tmp_path):
    """The checkpoint of an epoch's last step is written before that epoch's validation (at
    the same step), which the resumed run redoes: its old row must not stay in the files."""

    def rows(out_dir):
        jsonl = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
        csv = [line.split(",")[:2] for line in (out_dir / "metrics.csv").read_text().splitlines()[1:]]
        assert [[r["split"], str(r["step"])] for r in jsonl] == csv
        return [(r["split"], r["step"], r["loss"]) for r in jsonl]

    epoch_run(tmp_path / "ref", 2)
    epoch_run(tmp_path / "run", 1)
    epoch_run(tmp_path / "run", 2)  # extends the finished run from its step-10 checkpoint
    expected = [("train", 5), ("train", 10), ("val", 10), ("train", 15), ("train", 20), ("val", 20)]
    assert [r[:2] for r in rows(tmp_path / "ref")] == expected
    assert rows(tmp_path / "run") == rows(tmp_path / "ref")


def test_resume_with_another_optimizer_or_scheduler_class_is_refused_before_loading(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    kw = {"out_dir": str(tmp_path), "max_steps": 3, "progress": False, "plot": False}
    Trainer(model, opt, scheduler=sched, **kw).fit(bptt_batches(tokens(200), 2, 5))

    def resume(make_opt, make_sched):
        torch.manual_seed(1)
        fresh = TinyLM()
        before = [p.detach().clone() for p in fresh.parameters()]
        o = make_opt(fresh.parameters())
        tr = Trainer(fresh, o, scheduler=make_sched(o), resume=True, **{**kw, "max_steps": 6})
        with pytest.raises(ValueError) as err:
            tr.fit(bptt_batches(tokens(200), 2, 5))
        assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))  # untouched
        assert o.param_groups[0]["lr"] == 1e-3 and tr.step == 0
        return str(err.value)

    step_lr = lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2)  # noqa: E731
    msg = resume(lambda ps: torch.optim.Adam(ps, lr=1e-3), step_lr)
    assert "was written with optimizer SGD, got Adam: resume with the same optimizer class" in msg
    msg = resume(
        lambda ps: torch.optim.SGD(ps, lr=1e-3), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)
    )
    assert "was written with scheduler StepLR, got ExponentialLR" in msg

    # a checkpoint without scheduler state, resumed with a scheduler: also before loading anything
    no_sched = tmp_path / "no_sched"
    save_checkpoint(no_sched, model, opt, step=3)
    fresh = TinyLM()
    before = [p.detach().clone() for p in fresh.parameters()]
    with pytest.raises(ValueError, match="has no scheduler state \\(got StepLR to load it into\\)"):
        load_checkpoint(no_sched, fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), step_lr(opt))
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))


def _ntasgd_run(out_dir, max_steps, checkpoint_every=None, init_seed=0):
    seed_everything(init_seed)
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=8.0)
    tr = Trainer(model, opt, max_steps=max_steps, max_epochs=10, val_every=2, nt_asgd=True, nonmono=1,
                 out_dir=str(out_dir), checkpoint_every=checkpoint_every, resume=True, progress=False,
                 plot=False)  # fmt: skip
    tr.fit(bptt_batches(tokens(400), 4, 10), bptt_batches(tokens(100, seed=3), 2, 10))
    return tr, model


@pytest.mark.parametrize("checkpoint_every", [None, 6, 7])
def test_ntasgd_final_checkpoint_is_the_returned_model_and_resumes_exactly(tmp_path, checkpoint_every):
    ref, ref_model = _ntasgd_run(tmp_path / "ref", 30)
    run, run_model = _ntasgd_run(tmp_path / "run", 18, checkpoint_every)
    assert run.ntasgd.triggered_at is not None and run.ntasgd.triggered_at < 18
    # (a) the final checkpoint loads to the model fit() returned (the averaged weights), also
    # when the last step was already saved by checkpoint_every (18 = 3 * 6)
    loaded = TinyLM()
    assert load_checkpoint(tmp_path / "run" / "checkpoints", loaded)["step"] == 18
    for a, b in zip(run_model.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(a, b)
    # (b) extending the run from it continues from the raw weights: the uninterrupted run
    res, res_model = _ntasgd_run(tmp_path / "run", 30, checkpoint_every, init_seed=123)
    assert res.losses == ref.losses
    assert (res.ntasgd.triggered_at, res.ntasgd.n_averaged) == (
        ref.ntasgd.triggered_at,
        ref.ntasgd.n_averaged,
    )
    for a, b in zip(ref_model.parameters(), res_model.parameters(), strict=True):
        assert torch.equal(a, b)


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


def _branch_run(out_dir, max_steps, load=None, interrupt_at=None, resume=False):
    """A run of TinyLM writing a checkpoint every 2 steps (``load``: ``trainer.load`` it first)."""
    seed_everything(0)
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), max_steps=max_steps, max_epochs=10,
                 checkpoint_every=2, keep_last=None, out_dir=str(out_dir), resume=resume, progress=False,
                 plot=False, callbacks=[Interrupt(interrupt_at)] if interrupt_at else [])  # fmt: skip
    if load is not None:
        tr.load(load)
    return _fit(tr, bptt_batches(tokens(300), 2, 10), interrupt_at)


def test_a_fit_from_a_loaded_older_checkpoint_names_it_latest_before_its_first_checkpoint(tmp_path):
    """trainer.load(step 2) of a run at step 6, then fit(): until the fit's first checkpoint `latest`
    named step 6, of the branch the user left, so a kill there and a resume=True went on from step
    6, not from the step 2 asked for. The fit names the loaded checkpoint latest as it starts, and
    deletes nothing (the newer ones go as keep_last rotates them out)."""
    ckpts = tmp_path / "checkpoints"
    _branch_run(tmp_path, 6)
    before = list_checkpoints(ckpts)
    _branch_run(tmp_path, 6, load=ckpts / "step-000000002", interrupt_at=3)  # killed before step 4
    assert latest_checkpoint(ckpts).name == "step-000000002" and list_checkpoints(ckpts) == before
    assert _branch_run(tmp_path, 3, resume=True).step == 3  # from step 2 (from step 6: 6, finished)
