"""Checkpoints through the trainer: exact resume (losses, data order, NT-ASGD, a finished run, a
loaded older checkpoint); the helpers of resumable runs other test files import."""

import json

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

from .models import TinyLM, tokens


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
