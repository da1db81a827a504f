"""Exact continuation in the combinations tests/train/test_checkpoint.py leaves out: a run stopped
and continued (a second ``fit()``, a resume) equals the run that never stopped, bit for bit."""

import json

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import (
    Callback,
    ScheduledSampler,
    Trainer,
    get_rng_state,
    lm_loss,
    load_checkpoint,
    seed_everything,
    set_rng_state,
)

from .models import TinyLM, tokens
from .test_checkpoint import Interrupt, loader_run
from .test_checkpoint import _fit as fit_to


def _trainer(max_steps, **kw):
    seed_everything(0)
    model = TinyLM(dropout=0.3)  # masks from the global RNG
    opt = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.5)
    tr = Trainer(model, opt, max_steps=max_steps, max_epochs=10, val_every=3, log_every=2, progress=False,
                 **kw)  # fmt: skip
    return tr, model


def _fit(tr):
    # variable windows drawn from the global RNG: the data order depends on it too
    data = bptt_batches(tokens(400), 3, 10, variable_length=True, min_len=4, std=3)
    return tr.fit(data, bptt_batches(tokens(60, seed=9), 1, 10))


def test_a_second_fit_after_a_mid_epoch_stop_goes_on_from_the_stop():
    """A fit() stopped by max_steps inside an epoch, then extended by a second fit() of the same
    trainer (docs/train.md: "a second fit() of the same trainer ... extending a finished run is
    exact too"), is the run of one fit(). Before, the second fit() started that epoch again from
    its first batch, with a fresh state, and retrained the batches the first one had trained."""
    for kw in ({}, {"nt_asgd": True, "nonmono": 1}):
        ref, ref_model = _trainer(24, **kw)
        _fit(ref)
        tr, model = _trainer(7, **kw)  # ~16 windows an epoch: step 7 is inside the first
        _fit(tr)
        assert (tr.step, tr.batch_in_epoch) == (7, 7)
        tr.config.max_steps = 24
        out = _fit(tr)
        assert (out["step"], tr.epoch) == (24, ref.epoch)
        assert tr.losses == ref.losses, kw
        val = lambda t: [r for r in t.history if r["split"] == "val"]  # noqa: E731
        assert val(tr) == val(ref)
        for a, b in zip(ref_model.parameters(), model.parameters(), strict=True):
            assert torch.equal(a, b), kw


def test_resume_of_a_dataloader_with_its_own_generator_keeps_its_order(tmp_path):
    """A shuffled DataLoader with ``generator=g`` draws its order from ``g``, which the checkpoints
    did not hold: a resumed run (a new process, ``g`` seeded anew) shuffled the epochs after the
    first in another order than the run that never stopped. Its state is checkpointed now, with the
    epoch's start and at the checkpoint, as the global RNG's. 7 batches an epoch."""
    ref = loader_run(tmp_path / "ref", loader_seed=1)
    assert ref.step == 21
    for kill in (11, 15):  # from the checkpoints of steps 8 and 12, inside the second epoch
        loader_run(tmp_path / f"run{kill}", interrupt_at=kill, loader_seed=1)
        assert loader_run(tmp_path / f"run{kill}", resume=True, loader_seed=1).losses == ref.losses, kill
    # a finished run, extended: its final checkpoint is between epochs
    loader_run(tmp_path / "ext", epochs=1, loader_seed=1)
    assert loader_run(tmp_path / "ext", resume=True, loader_seed=1).losses == ref.losses


def _sampled_run(out_dir, interrupt_at=None, resume=False, epochs=2):
    """A step_fn feeding each sequence its input or a corrupted one, as a ``ScheduledSampler`` with
    its own generator decides (at p = 0.5 every coin counts), handed to the trainer; a resume runs
    as in another process, with another global RNG and the sampler's generator seeded anew."""
    seed_everything(0 if not resume else 99)
    torch.manual_seed(0)
    model = TinyLM()
    sampler = ScheduledSampler(0.5, generator=torch.Generator().manual_seed(5))

    def step_fn(m, batch, state):
        x, y = batch[0], batch[1]  # (T, B): the sampler's coins are per sequence, (B, T)
        x = sampler.choose(0, x.T, ((x + 1) % 11).T).T
        return lm_loss(m(x)[0], y), None

    cbs = [Interrupt(interrupt_at)] if interrupt_at else []
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.3), step_fn=step_fn, out_dir=str(out_dir),
                 checkpoint_every=4, max_epochs=epochs, resume=resume, generators=[sampler.generator],
                 callbacks=cbs, progress=False, plot=False)  # fmt: skip
    return fit_to(tr, bptt_batches(tokens(200), 2, 10), interrupt_at)


def test_resume_with_a_scheduled_sampler_of_its_own_generator_draws_as_before(tmp_path):
    """A ``ScheduledSampler(generator=g)`` draws its coins from ``g``, which the trainer cannot
    find in the data: a resumed run (``g`` seeded anew) fed other inputs than the run that never
    stopped from the checkpoint on. The trainer's ``generators`` go into checkpoints now."""
    ref = _sampled_run(tmp_path / "ref")
    assert ref.step == 20
    for kill in (7, 10):  # from the checkpoint of step 4 (inside the first epoch), of step 8
        _sampled_run(tmp_path / f"run{kill}", interrupt_at=kill)
        assert _sampled_run(tmp_path / f"run{kill}", resume=True).losses == ref.losses, kill
    _sampled_run(tmp_path / "ext", epochs=1)  # a finished run, extended: between epochs
    assert _sampled_run(tmp_path / "ext", resume=True).losses == ref.losses


@pytest.mark.parametrize("bad", [torch.Generator(), [torch.Generator(), 3], 5])
def test_trainer_generators_must_be_generators(bad):
    with pytest.raises(TypeError, match="generators must be an iterable of torch.Generator objects, got"):
        Trainer(TinyLM(), torch.optim.SGD(TinyLM().parameters(), lr=0.1), generators=bad)


@pytest.mark.parametrize("bad", [3, torch.zeros(5056, dtype=torch.uint8)])
def test_rng_state_generators_must_be_generators(bad):
    """get_rng_state(3) failed on "'int' object has no attribute 'get_state'", and set_rng_state
    on set_state after it had restored the global RNGs; a state tensor is named, not printed."""
    g = torch.Generator().manual_seed(3)
    state = get_rng_state(g)
    msg = f"generators must be torch.Generator objects, got {type(bad).__name__} as generator"
    with pytest.raises(TypeError, match=f"{msg} 1$"):
        get_rng_state(g, bad)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with pytest.raises(TypeError, match=f"{msg} 0$"):
        set_rng_state(state, bad)
    assert torch.equal(torch.get_rng_state(), before)  # refused before anything was restored


def test_set_rng_state_names_a_state_that_is_not_one():
    """set_rng_state(None) failed on "'NoneType' object has no attribute 'get'" and a state
    without the global RNGs' on a bare KeyError: 'python'."""
    with pytest.raises(TypeError, match="state must be the dict get_rng_state returned, got NoneType"):
        set_rng_state(None)
    with pytest.raises(ValueError, match=r"hold 'python', 'numpy' and 'torch' .* got keys \['generators'\]"):
        set_rng_state({"generators": []})


@pytest.mark.parametrize(
    "args, kw, match",
    [
        ((None,), {}, "model must be a torch.nn.Module, got NoneType"),
        ((TinyLM(), {"max_steps": 2}), {}, r"config must be a TrainConfig or None \(.*\), got dict"),
        ((TinyLM(),), {"loss_fn": "cross_entropy"}, "loss_fn must be callable, got str"),
        ((TinyLM(),), {"step_fn": 3}, "step_fn must be callable, got int"),
    ],
)
def test_trainer_arguments_of_another_type_are_named(args, kw, match):
    """A dict config failed in dataclasses' words ("replace() should be called on dataclass
    instances"), a None model on a missing attribute, a loss_fn or step_fn that is no function
    only at the first step ("'str' object is not callable")."""
    model, *rest = args
    opt = torch.optim.SGD(TinyLM().parameters(), lr=0.1)
    with pytest.raises(TypeError, match=match):
        Trainer(model, opt, *rest, **kw)


def test_rng_state_with_generators_needs_as_many_to_restore():
    g = torch.Generator().manual_seed(3)
    state = get_rng_state(g)
    first = torch.rand(2, generator=g)
    set_rng_state(state, g)
    assert torch.equal(torch.rand(2, generator=g), first)
    with pytest.raises(ValueError, match="holds 1 data generator state\\(s\\), got 0 generator"):
        set_rng_state(state)
    set_rng_state(get_rng_state(), g)  # a state of before the generators leaves them as they are


def _ntasgd_run(out_dir, max_steps, init_seed=0):
    seed_everything(init_seed)
    model = TinyLM(dropout=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=8.0)
    tr = Trainer(model, opt, max_steps=max_steps, max_epochs=10, val_every=2, nt_asgd=True, nonmono=1,
                 out_dir=str(out_dir), checkpoint_every=7, resume=True, progress=False,
                 plot=False)  # fmt: skip
    tr.fit(bptt_batches(tokens(400), 4, 10), bptt_batches(tokens(100, seed=3), 2, 10))
    return tr, model


def test_a_relaunched_finished_ntasgd_run_still_extends_exactly(tmp_path):
    """A finished NT-ASGD run relaunched with the same limits trains nothing but writes its final
    checkpoint again (the averaged weights). That one took the RNG, epoch RNG and recurrent state
    of the relaunched process, not those of the checkpoint it had loaded (applied only when an
    epoch starts, which never came): ``None`` for the epoch's RNG, and extending the run from it
    failed. A loaded state not yet applied is what is saved now."""
    ref, ref_model = _ntasgd_run(tmp_path / "ref", 30)
    first, _ = _ntasgd_run(tmp_path / "run", 18)  # 10 windows an epoch: it stops inside the second
    assert first.ntasgd.triggered and first.batch_in_epoch == 8
    again, _ = _ntasgd_run(tmp_path / "run", 18, init_seed=4)  # e.g. a job scheduler's relaunch
    assert again.losses == first.losses
    res, res_model = _ntasgd_run(tmp_path / "run", 30, init_seed=5)
    assert res.losses == ref.losses
    for a, b in zip(ref_model.parameters(), res_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_of_another_world_size_is_refused_before_anything_is_loaded(tmp_path, monkeypatch):
    """The world-size check ran after the weights, optimizer and counters had been loaded: a
    refused checkpoint left the trainer half changed (the checkpoint's weights, its step)."""
    from rnnkit.train import distributed

    tr, _ = _trainer(6, out_dir=str(tmp_path))
    _fit(tr)
    fresh, model = _trainer(6)
    before = [p.detach().clone() for p in model.parameters()]
    monkeypatch.setattr(distributed, "get_world_size", lambda: 2)
    with pytest.raises(ValueError, match="written by 1 processes, resuming with 2"):
        fresh.load(tmp_path / "checkpoints")
    assert fresh.step == 0 and fresh.losses == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_checkpoint_without_trainer_state_is_refused_by_name_before_anything_is_loaded(tmp_path):
    """trainer.load of a save_checkpoint(model, optimizer) directory failed on a bare KeyError ('ranks')."""
    from rnnkit.train import save_checkpoint

    other = TinyLM()
    save_checkpoint(tmp_path, other, torch.optim.SGD(other.parameters(), lr=2.0), step=3)
    fresh, model = _trainer(6)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"03 is not a Trainer checkpoint: its state lacks step, .*, ranks"):
        fresh.load(tmp_path)
    assert fresh.step == 0 and fresh.losses == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_an_explicit_load_before_fit_is_not_replaced_by_the_latest_checkpoint(tmp_path):
    """With resume=True, trainer.load(older) before fit() was silently replaced by the latest
    checkpoint: the run went on from step 6, not from the step 2 asked for."""
    tr, _ = _trainer(6, out_dir=str(tmp_path), checkpoint_every=2, keep_last=5)
    _fit(tr)
    ref, _ = _trainer(4)
    _fit(ref)
    again, _ = _trainer(4, out_dir=str(tmp_path), resume=True, keep_last=5)
    again.load(tmp_path / "checkpoints" / "step-000000002")
    assert _fit(again)["step"] == 4
    assert again.losses == ref.losses


def test_the_final_checkpoint_holds_the_epoch_end_after_a_checkpoint_at_its_last_step(tmp_path):
    """A checkpoint at an epoch's last step, then the epoch-end validation: the final save was
    skipped (that step was saved), so the final checkpoint lacked the validation and the epoch
    count, and a relaunch drew the whole epoch again to redo it."""
    data = list(bptt_batches(tokens(200), 2, 10))
    seed_everything(0)
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=1, progress=False,
                 checkpoint_every=len(data), out_dir=str(tmp_path))  # fmt: skip
    tr.fit(data, data[:2])
    again = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=1, progress=False)
    again.load(tmp_path / "checkpoints")
    assert (again.step, again.epoch, again.batch_in_epoch) == (len(data), 1, 0)
    assert [r["split"] for r in again.history][-1] == "val"


def test_a_budget_spent_at_an_epochs_last_batch_still_ends_the_epoch(tmp_path):
    """max_steps reached at an epoch's last batch: that epoch's validation (val_every=None) and its
    count, as in the run without the limit. Before, the run stopped before the epoch's end: the last
    epoch was never validated, nor its best kept by save_best. Resuming it stays exact."""

    def run(out, max_steps, **kw):
        seed_everything(0)
        model = TinyLM(dropout=0.3)
        tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=1.0), max_epochs=3, max_steps=max_steps,
                     out_dir=str(out), save_best=True, progress=False, plot=False, tensorboard=False,
                     **kw)  # fmt: skip
        # variable windows drawn from the global RNG, about 10 an epoch
        data = bptt_batches(tokens(300), 3, 10, variable_length=True, min_len=4, std=3)
        return tr, tr.fit(data, bptt_batches(tokens(60, seed=9), 1, 10)), model

    val = lambda t: [r for r in t.history if r["split"] == "val"]  # noqa: E731
    ref, _, ref_model = run(tmp_path / "ref", None)
    end = val(ref)[1]["step"]  # the second epoch's last step
    tr, res, _ = run(tmp_path / "cut", end)
    assert (res["step"], res["epoch"], res["stop_reason"]) == (end, 2, "max_steps")
    assert val(tr) == val(ref)[:2]
    assert res["best_val"] == min(r["loss"] for r in val(ref)[:2])
    assert load_checkpoint(tmp_path / "cut" / "best")["state"]["val_loss"] == res["best_val"]
    # resumed from its final checkpoint (between epochs): the run that never stopped
    again, _, model = run(tmp_path / "cut", None, resume=True)
    assert again.losses == ref.losses and val(again) == val(ref)
    assert all(torch.equal(a, b) for a, b in zip(ref_model.parameters(), model.parameters(), strict=True))


class _NoisyBatches:
    """Fixed windows with a random token noise drawn from the global RNG as each batch is made
    (an augmentation in a DataLoader's collate_fn does the same): every next() moves the RNG."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        for b in self.batches:
            keep = torch.rand(b.inputs.shape) < 0.8
            yield b._replace(inputs=torch.where(keep, b.inputs, torch.randint(0, 11, b.inputs.shape)))


def test_a_resume_from_a_budget_stop_inside_an_epoch_is_exact(tmp_path):
    """max_steps reached inside an epoch: the trainer draws the next batch to see whether the
    epoch is over, and must put the RNG back as it was before that draw, or the final checkpoint
    holds an RNG one batch ahead and the resumed run draws other noise and other dropout masks
    than the run that never stopped."""
    data = _NoisyBatches(list(bptt_batches(tokens(400), 3, 10)))  # 13 windows an epoch

    def run(max_steps, **kw):
        tr, model = _trainer(max_steps, **kw)
        tr.fit(data, bptt_batches(tokens(60, seed=9), 1, 10))
        return tr, model

    ref, ref_model = run(20)
    cut, _ = run(7, out_dir=str(tmp_path))
    assert (cut.step, cut.batch_in_epoch) == (7, 7)
    res, model = run(20, out_dir=str(tmp_path), resume=True)
    assert res.losses == ref.losses
    assert all(torch.equal(a, b) for a, b in zip(ref_model.parameters(), model.parameters(), strict=True))


def test_checkpoints_hold_the_losses_in_binary_and_old_json_lists_still_load(tmp_path):
    """Every checkpoint's state.json held Trainer.losses as a JSON list, one float a step (a
    million-step run: ~20 MB of JSON a checkpoint). They are now a float64 tensor in
    state.safetensors (8 bytes a step, exact, NaN kept); a state.json of before still resumes."""
    tr, _ = _trainer(6, out_dir=str(tmp_path), checkpoint_every=3)
    _fit(tr)
    tr.losses[1] = float("nan")  # a step without targets: kept through the tensor
    tr.save()
    ckpt = tmp_path / "checkpoints" / "step-000000006"
    doc = json.loads((ckpt / "state.json").read_text())
    items = dict(doc["state"]["__dict__"])
    assert items["losses"] == {"__tensor__": "state.losses"}
    again, _ = _trainer(6)
    again.load(ckpt)
    assert len(again.losses) == 6 and again.losses[2:] == tr.losses[2:] and again.losses[0] == tr.losses[0]
    assert again.losses[1] != again.losses[1] and all(type(v) is float for v in again.losses)
    # a checkpoint of before: the losses as a JSON list in state.json
    items["losses"] = [v if v == v else {"__float__": "nan"} for v in tr.losses]
    doc["state"]["__dict__"] = [[k, v] for k, v in items.items()]
    (ckpt / "state.json").write_text(json.dumps(doc))
    old, _ = _trainer(6)
    old.load(ckpt)
    assert len(old.losses) == 6 and old.losses[2:] == tr.losses[2:] and old.losses[1] != old.losses[1]


def test_trainer_load_of_best_says_it_is_a_model_only_checkpoint(tmp_path):
    """trainer.load(out_dir/best) said only that it had no optimizer state, as if damaged: best/
    holds the weights alone by design, and load_checkpoint(path, model) loads them."""
    tr, _ = _trainer(6, out_dir=str(tmp_path), save_best=True, plot=False, tensorboard=False)
    _fit(tr)
    fresh, model = _trainer(6)
    before = [p.detach().clone() for p in model.parameters()]
    msg = r"has no optimizer state .*: it is a model-only checkpoint .* load_checkpoint\(path, model\)"
    with pytest.raises(ValueError, match=msg):
        fresh.load(tmp_path / "best")
    assert fresh.step == 0 and all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    load_checkpoint(tmp_path / "best", model)  # what the error points to


def test_a_resume_mid_epoch_with_another_batch_size_names_the_carried_rows(tmp_path):
    """A checkpoint inside an epoch carries a state of its batches' rows: a resume given batches
    of another size failed in the layer's words ("Expected hidden[0] size (1, 4, 8), got [1, 3,
    8]"), as the first batch after a resume was not checked against the state carried into it."""
    val = bptt_batches(tokens(60, seed=9), 1, 10)
    tr, _ = _trainer(5, out_dir=str(tmp_path))
    tr.fit(bptt_batches(tokens(400), 3, 10), val)
    assert tr.batch_in_epoch == 5
    tr, _ = _trainer(8, out_dir=str(tmp_path), resume=True)
    with pytest.raises(ValueError, match="batch 6 of the epoch has 4 sequences after one of 3"):
        tr.fit(bptt_batches(tokens(400), 4, 10), val)


@pytest.mark.parametrize("scheduled", [False, True])
def test_a_resume_with_another_learning_rate_says_the_checkpoints_is_used(tmp_path, caplog, scheduled):
    """Loading the checkpoint's optimizer state replaces the rate the new optimizer was built with:
    a resume asked for another rate and trained on with the old one, silently. The same rate (a
    scheduler's decayed one included) says nothing."""

    def load(lr):
        torch.manual_seed(0)
        model = TinyLM()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5) if scheduled else None
        tr = Trainer(model, opt, scheduler=sched, out_dir=str(tmp_path), max_steps=3, progress=False)
        return tr, opt

    tr, _ = load(0.5)
    tr.fit(bptt_batches(tokens(200), 2, 10))
    with caplog.at_level("WARNING", logger="rnnkit.train"):
        load(0.5)[0].load(tmp_path / "checkpoints")
        assert not caplog.records
        tr, opt = load(0.1)
        tr.load(tmp_path / "checkpoints")
    assert opt.param_groups[0]["lr"] == (0.25 if scheduled else 0.5)
    assert "learning rates [0.1] are replaced by the checkpoint's [0.5]" in caplog.text


def _settings_run(tmp_path, **kw):
    """A trainer of out_dir ``tmp_path`` (3 steps) with the settings ``kw``."""
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return Trainer(model, opt, out_dir=str(tmp_path), max_steps=3, progress=False, **kw)


@pytest.mark.parametrize(
    "run, resume, named",
    [
        ({"tbptt_k1": 5}, {"tbptt_k1": 2, "tbptt_k2": 4}, ["tbptt_k1 5 -> 2", "tbptt_k2 None -> 4"]),
        ({"clip_norm": 1.0}, {"clip_value": 0.5}, ["clip_norm 1.0 -> None", "clip_value None -> 0.5"]),
        ({}, {"amp": "bf16"}, ["amp None -> 'bf16'"]),
        ({"nt_asgd": True}, {"scale_lr_by_seq_len": False}, ["scale_lr_by_seq_len True -> False",
                                                              "nt_asgd True -> False"]),
        # when validations run moves NT-ASGD's trigger: it passed without a word
        ({"nt_asgd": True, "val_every": 2}, {"nt_asgd": True, "val_every": 5}, ["val_every 2 -> 5"]),
    ],
)  # fmt: skip
def test_a_resume_with_other_step_settings_says_which(tmp_path, caplog, run, resume, named):
    """A resume whose settings of a training step (STEP_FIELDS) are not the checkpoint's trained on
    with the new ones beside the run's optimizer state, silently: load() logs one warning naming
    each with the checkpoint's value and the new one."""
    val = bptt_batches(tokens(60, seed=9), 1, 10)
    _settings_run(tmp_path, **run).fit(bptt_batches(tokens(200), 2, 10), val)
    with caplog.at_level("WARNING", logger="rnnkit.train"):
        tr = _settings_run(tmp_path, **resume, resume=True)
        tr.load(tmp_path / "checkpoints")
    assert len(caplog.records) == 1, caplog.text
    assert "training settings other than the checkpoint's" in caplog.text
    assert all(n in caplog.text for n in named), caplog.text
    assert tr.step == 3  # loaded all the same


def test_a_resume_with_other_limits_cadences_or_device_says_nothing(tmp_path, caplog):
    """What a resume changes on purpose (a longer budget, other validations, logging, checkpoints,
    progress, the device: rnnkit train --resume sets them) is no step setting: no warning, and with
    the step settings unchanged the resume stays exact."""
    step = {"tbptt_k1": 5, "clip_norm": 1.0}
    data = lambda: bptt_batches(tokens(200), 2, 10)  # noqa: E731
    val = bptt_batches(tokens(60, seed=9), 1, 10)
    ref = _settings_run(tmp_path / "ref", **step, max_epochs=5)
    ref.config.max_steps = 12
    ref.fit(data(), val)
    _settings_run(tmp_path / "run", **step, max_epochs=5).fit(data(), val)
    with caplog.at_level("WARNING", logger="rnnkit.train"):
        tr = _settings_run(
            tmp_path / "run", **step, resume=True, max_epochs=6, validate_at_end=False, log_every=1,
            checkpoint_every=2, keep_last=None, device="cpu", tensorboard=False, plot=False, patience=4,
        )  # fmt: skip
        tr.config.max_steps = 12
        tr.fit(data(), val)
    assert not caplog.records, caplog.text
    assert tr.losses == ref.losses


def test_a_checkpoint_without_a_stored_config_or_a_setting_loads_as_before(tmp_path, caplog):
    """A checkpoint whose config lacks the step settings (written before them, or by hand with
    none) has nothing to compare: it loads without a warning."""
    _settings_run(tmp_path, clip_norm=1.0).fit(bptt_batches(tokens(200), 2, 10))
    state = next((tmp_path / "checkpoints").glob("step-*")) / "state.json"
    doc = json.loads(state.read_text())
    for config in ({k: v for k, v in doc["config"].items() if k != "clip_norm"}, {}):
        state.write_text(json.dumps({**doc, "config": config}))
        with caplog.at_level("WARNING", logger="rnnkit.train"):
            tr = _settings_run(tmp_path, clip_norm=0.5)
            tr.load(tmp_path / "checkpoints")
        assert not caplog.records and tr.step == 3, caplog.text


class _Rates(Callback):
    """The learning rate of each step (an epoch schedule moves it after the epoch's last step)."""

    def __init__(self):
        self.rates = []

    def on_step_end(self, trainer, logs):
        self.rates.append(trainer.optimizer.param_groups[0]["lr"])


def _epoch_scheduled_run(out_dir, interrupt_at=None, resume=False, **kw):
    """3 epochs of 10 steps, a StepLR halving the rate each epoch (scheduler_interval="epoch")."""
    seed_everything(0)
    model = TinyLM(dropout=0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    rates = _Rates()
    cbs = [rates] + ([Interrupt(interrupt_at)] if interrupt_at else [])
    tr = Trainer(model, opt, scheduler=sched, scheduler_interval="epoch", out_dir=str(out_dir), resume=resume,
                 checkpoint_every=1, keep_last=None, max_epochs=3, progress=False, plot=False, callbacks=cbs,
                 **kw)  # fmt: skip
    fit_to(tr, bptt_batches(tokens(200), 2, 11), interrupt_at)
    return tr, model, sched, rates.rates


def test_a_per_epoch_scheduler_steps_at_epoch_ends_and_resumes_exactly(tmp_path):
    """A scheduler could only be stepped after every step: an epoch schedule (StepLR in epochs)
    needed a loop of one's own. scheduler_interval="epoch" steps it at each epoch's end, and a run
    interrupted anywhere (inside an epoch, at its last step, at the next epoch's first) and resumed
    steps it as often, with the same rates, losses and weights, bit for bit."""
    ref, ref_model, ref_sched, rates = _epoch_scheduled_run(tmp_path / "ref")
    assert (ref.step, ref.epoch, ref_sched.last_epoch) == (30, 3, 3)
    assert rates == [0.5] * 10 + [0.25] * 10 + [0.125] * 10
    for kill in (5, 11, 12, 21):  # checkpoints 4, 10 (an epoch's last step, before its end), 11, 20
        _epoch_scheduled_run(tmp_path / f"k{kill}", interrupt_at=kill)
        tr, model, sched, seen = _epoch_scheduled_run(tmp_path / f"k{kill}", resume=True)
        assert sched.last_epoch == 3 and seen == rates[kill - 1 :], kill
        assert tr.losses == ref.losses, kill
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref_model.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"^scheduler_interval must be 'step' or 'epoch', got 'epochs'$"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), scheduler_interval="epochs")


@pytest.mark.parametrize("first_steps", [3, 10])  # inside the first epoch (10 batches of 2), at its end
def test_a_resume_on_another_batch_size_says_so(tmp_path, caplog, first_steps):
    """A resume on data of another batch size went on silently: at an epoch's end the epochs left
    train otherwise than the run would have, and inside one (without a carried state to check the
    rows) the position skipped counted batches of the new size. load()'s fit logs a warning naming
    both sizes; the same size, or a checkpoint of before the size was stored, says nothing."""
    data = lambda n: bptt_batches(tokens(200), n, 10)  # noqa: E731
    kw = {"carry_state": False, "max_epochs": 2}
    tr = _settings_run(tmp_path, **kw)
    tr.config.max_steps = first_steps
    tr.fit(data(2))

    def resume(where: str, batch_size: int):
        tr = _settings_run(tmp_path / where, **kw)
        tr.load(tmp_path / "checkpoints")
        tr.config.max_steps = first_steps + 2
        tr.fit(data(batch_size))
        return tr

    with caplog.at_level("WARNING", logger="rnnkit.train"):
        resume("same", 2)
        assert not caplog.records, caplog.text
        tr = resume("other", 3)
    assert len(caplog.records) == 1, caplog.text
    assert "resuming on data of batch_size 3, the run's was 2: " in caplog.text
    why = "not where the run stopped" if first_steps == 3 else "the epochs left train otherwise"
    assert why in caplog.text and tr.step == first_steps + 2
    caplog.clear()
    state = tmp_path / "checkpoints" / f"step-{first_steps:09d}" / "state.json"
    doc = json.loads(state.read_text())
    pairs = doc["state"]["__dict__"]  # (serialize's encoding of a dict: its pairs)
    assert ["batch_size", 2] in pairs
    doc["state"]["__dict__"] = [kv for kv in pairs if kv[0] != "batch_size"]
    state.write_text(json.dumps(doc))
    with caplog.at_level("WARNING", logger="rnnkit.train"):
        resume("before", 3)
    assert not caplog.records, caplog.text


def test_a_resume_without_the_runs_scheduler_says_so(tmp_path, caplog):
    """A run with a scheduler resumed by a trainer without one loaded silently and trained on at
    the checkpoint's rate, frozen, where the run would have gone on with its schedule (a scheduler
    of another class, or one where the run had none, is refused). load() logs a warning naming the
    run's scheduler class and the rates the steps left train at."""

    def run(sched, **kw):
        torch.manual_seed(0)
        model = TinyLM()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if sched else None
        return Trainer(model, opt, scheduler=sched, out_dir=str(tmp_path), max_steps=3, progress=False, **kw)

    run(True).fit(bptt_batches(tokens(200), 2, 10))
    with caplog.at_level("WARNING", logger="rnnkit.train"):
        run(True, resume=True).load(tmp_path / "checkpoints")
        assert not caplog.records, caplog.text
        tr = run(False, resume=True)
        tr.load(tmp_path / "checkpoints")
    assert len(caplog.records) == 1, caplog.text
    assert "the run had a scheduler (StepLR), this trainer has none" in caplog.text
    assert "train at the checkpoint's rates [0.25]" in caplog.text and tr.step == 3
