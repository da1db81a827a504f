"""Trainer: protocols, clipping, LR scaling, validation, early stopping, NT-ASGD."""

import math

import pytest
import torch
from torch.utils.data import DataLoader

from rnnkit.data import BucketBatchSampler, PadCollate, bptt_batches
from rnnkit.train import (
    NTASGD,
    Callback,
    TrainConfig,
    Trainer,
    evaluate_lm,
    lm_loss,
)

from .models import Stateless, TinyLM, sgd, tokens


def test_stateful_lm_learns_and_evaluate_lm_matches():
    torch.manual_seed(0)
    model = TinyLM(hidden=16)
    data, val = tokens(1200), tokens(300, seed=5)
    before = evaluate_lm(model, val, 2, 10)
    tr = Trainer(model, torch.optim.Adam(model.parameters(), lr=0.03), max_epochs=3, progress=False)
    out = tr.fit(bptt_batches(data, 4, 10), bptt_batches(val, 2, 10))
    after = evaluate_lm(model, val, 2, 10)
    assert after < before - 1.0 and out["stop_reason"] == "max_epochs"
    # evaluate over the same windows with carried state == evaluate_lm
    assert tr.evaluate(bptt_batches(val, 2, 10))["loss"] == pytest.approx(after, rel=1e-6)
    assert [r["split"] for r in tr.history].count("val") == 3
    assert model.training  # evaluate restored the mode


def test_evaluate_leaves_out_batches_without_targets():
    """A validation batch whose targets are all -100 has no loss (a mean over nothing: NaN); it
    weighs 0 tokens, and NaN * 0 made the whole validation loss NaN (under DDP on every rank)."""
    torch.manual_seed(0)
    model = TinyLM()
    tr = Trainer(model, sgd(model), carry_state=False, progress=False)
    batches = [(torch.randint(0, 11, (5, 2)), torch.randint(0, 11, (5, 2))) for _ in range(2)]
    empty = (torch.randint(0, 11, (5, 2)), torch.full((5, 2), -100))
    with_empty = tr.evaluate([batches[0], empty, batches[1]])
    assert with_empty == tr.evaluate(batches) and with_empty["tokens"] == 20
    assert math.isfinite(with_empty["loss"])
    with pytest.raises(ValueError, match=r"got no target \(no batches, or all targets -100\)"):
        tr.evaluate([empty])


def test_stateless_model_and_custom_step_fn():
    torch.manual_seed(0)
    model = Stateless()
    tr = Trainer(model, sgd(model, 1.0), stateful=False, max_epochs=5, progress=False)
    tr.fit(bptt_batches(tokens(400), 4, 10))
    assert tr.losses[-1] < tr.losses[0]

    calls = []

    def step_fn(m, batch, state):
        calls.append(state)
        out = m(batch.inputs)
        return lm_loss(out, batch.targets), ("carried", len(calls))

    tr = Trainer(model, sgd(model), step_fn=step_fn, max_steps=3, progress=False)
    tr.fit(bptt_batches(tokens(400), 4, 10))
    assert calls == [None, ("carried", 1), ("carried", 2)]


def test_step_fn_keeps_the_loss_dtype():
    """A ``step_fn`` computing the default step's loss trains and logs exactly as the default step
    in float64: its loss was cast to float32 (logged losses rounded, and so the gradient's DDP
    weight); only half-precision losses (autocast) are raised to float32."""

    def step_fn(m, batch, state):
        output, state = m(batch[0], state)
        return lm_loss(output, batch[1]), state

    runs = []
    for fn in (None, step_fn):
        torch.manual_seed(0)
        model = TinyLM()
        tr = Trainer(model, sgd(model), step_fn=fn, max_steps=3, progress=False)
        tr.fit(bptt_batches(tokens(400), 4, 10))
        runs.append((tr.losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_padded_batches_with_bucketing_and_fresh_state():
    torch.manual_seed(0)
    seqs = [tokens(n, seed=n) for n in range(5, 25)]
    ds = [(s[:-1], s[1:]) for s in seqs]
    sampler = BucketBatchSampler([len(x) for x, _ in ds], 4, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=PadCollate())
    model = TinyLM()
    seen = []

    class Spy(Callback):
        def on_step_end(self, trainer, logs):
            seen.append(logs["tokens"])

    tr = Trainer(model, sgd(model), carry_state=False, max_epochs=2, callbacks=[Spy()], progress=False)
    tr.fit(loader)
    assert tr.step == 10 and sum(seen) == 2 * sum(len(x) for x, _ in ds)  # padding not counted
    assert sampler.epoch == 1  # set_epoch reached the batch sampler


def test_clip_by_norm_and_value():
    torch.manual_seed(0)
    model = TinyLM()
    before = [p.detach().clone() for p in model.parameters()]
    logs = []

    class Spy(Callback):
        def on_log(self, trainer, row):
            logs.append(row)

    big = lambda out, y: 1e3 * lm_loss(out, y)  # noqa: E731
    tr = Trainer(
        model,
        sgd(model, 1.0),
        loss_fn=big,
        clip_norm=0.1,
        max_steps=1,
        log_every=1,
        callbacks=[Spy()],
        progress=False,
    )
    tr.fit(bptt_batches(tokens(100), 2, 5))
    delta = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert delta.norm().item() == pytest.approx(0.1, rel=1e-5)
    assert logs[0]["grad_norm"] > 0.1

    before = [p.detach().clone() for p in model.parameters()]
    tr = Trainer(model, sgd(model, 1.0), loss_fn=big, clip_value=0.01, max_steps=1, progress=False)
    tr.fit(bptt_batches(tokens(100), 2, 5))
    delta = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
    assert delta.abs().max().item() == pytest.approx(0.01, rel=1e-6)


def test_lr_scaled_by_window_length_then_restored():
    seen = []

    class SpySGD(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    model = TinyLM()
    opt = SpySGD(model.parameters(), lr=0.1)
    batches = bptt_batches(tokens(1000), 2, 10, variable_length=True, seed=0)
    tr = Trainer(model, opt, max_steps=5, progress=False)
    tr.fit(batches)
    expected = [0.1 * b.lr_scale for b in list(batches)[:5]]
    assert seen == pytest.approx(expected) and len(set(seen)) > 1
    assert opt.param_groups[0]["lr"] == 0.1


def test_scheduler_and_early_stopping_and_time_budget():
    model = TinyLM()
    opt = sgd(model, 0.0)  # lr 0: the validation loss never improves
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=1.0)
    tr = Trainer(model, opt, scheduler=sched, val_every=2, patience=2, max_epochs=10, progress=False)
    out = tr.fit(bptt_batches(tokens(200), 2, 5), bptt_batches(tokens(50), 1, 5))
    assert out["stop_reason"] == "early_stopping" and tr.step == 6  # 1 best + 2 bad evals
    assert sched.last_epoch == 6

    opt = sgd(model)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    tr = Trainer(model, opt, scheduler=plateau, max_epochs=3, progress=False)
    tr.fit(bptt_batches(tokens(200), 2, 5), bptt_batches(tokens(50), 1, 5))
    assert plateau.last_epoch == 3

    tr = Trainer(model, sgd(model), max_minutes=1e-9, max_epochs=5, progress=False)
    assert tr.fit(bptt_batches(tokens(200), 2, 5))["stop_reason"] == "max_minutes"
    assert tr.step == 1


def test_nt_asgd_unit():
    model = torch.nn.Linear(1, 1, bias=False)
    avg = NTASGD(model, nonmono=2)
    # fires when worse than the best of all but the last `nonmono` losses (AWD-LSTM)
    fired = [avg.observe(v, step=i) for i, v in enumerate([5.0, 4.0, 3.0, 3.5, 4.5, 3.1])]
    assert fired == [False, False, False, False, True, False] and avg.triggered_at == 4
    avg2 = NTASGD(model, nonmono=1)
    assert [avg2.observe(v, 0) for v in [2.0, 3.0, 2.5]] == [False, False, True]
    ws = []
    with torch.no_grad():
        for w in [1.0, 2.0, 6.0]:
            model.weight.fill_(w)
            avg2.update()
            ws.append(w)
    start = avg2.averages[0].item()
    # averaged = mean(weight at trigger, updates...)
    with avg2.swapped():
        assert model.weight.item() == pytest.approx(start)
    assert model.weight.item() == 6.0
    fresh = NTASGD(model, nonmono=2)
    fresh.load_state_dict(NTASGD(model).state_dict())  # untriggered: nothing averaged yet
    assert not fresh.triggered and fresh.averages == []
    fresh.load_state_dict(avg2.state_dict())
    assert fresh.triggered and torch.equal(fresh.averages[0], avg2.averages[0])


def test_nt_asgd_in_trainer_averages_weights():
    torch.manual_seed(0)
    model = TinyLM()
    tr = Trainer(model, sgd(model, 0.5), nt_asgd=True, nonmono=1, val_every=1, max_steps=6, progress=False)
    scripted = iter([2.0, 3.0, 2.5, 2.4, 2.3, 2.2])
    tr.evaluate = lambda data: {"loss": next(scripted), "ppl": 1.0, "tokens": 1}
    snaps = []

    class Snap(Callback):
        def on_step_end(self, trainer, logs):
            snaps.append([p.detach().clone() for p in model.parameters()])

    tr.callbacks.append(Snap())
    tr.fit(bptt_batches(tokens(200), 2, 5), val_data=[None])
    assert tr.ntasgd.triggered_at == 3
    # trigger at step 3 (after its update): average of the weights after steps 3..6
    for i, p in enumerate(model.parameters()):
        expected = torch.stack([s[i] for s in snaps[2:]]).mean(0)
        torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"tbptt_k1": 4, "tbptt_k2": 2}, "tbptt_k2 must be >= tbptt_k1, got k1=4, k2=2"),
        ({"tbptt_k2": 2}, "tbptt_k2 needs tbptt_k1"),
        ({"tbptt_k1": 2, "stateful": False}, "needs a stateful model"),
        ({"clip_norm": -1.0}, "clip_norm must be > 0 or None, got -1.0"),
        ({"resume": True}, "resume=True needs out_dir"),
        ({"checkpoint_every": 5}, r"checkpoint_every=5 needs out_dir \(where the checkpoints go\), got None"),
        ({"max_epochs": 0}, "max_epochs must be >= 1, got 0"),
        # counts of steps taken as floats: tbptt_k1=2.5 failed in narrow() at the first long batch,
        # val_every=2.5 validated every 5 steps and keep_last=1.5 failed at the first checkpoint
        ({"tbptt_k1": 2.5}, "tbptt_k1 must be an int, got 2.5"),
        ({"val_every": 2.5}, "val_every must be an int, got 2.5"),
        ({"keep_last": 1.5}, "keep_last must be an int, got 1.5"),
        ({"max_steps": True}, "max_steps must be an int, got True"),
        # accepted before: a negative min_delta made worse validations the best (save_best kept
        # them), NaN clip_norm turned every gradient NaN, a NaN budget never ran out, a str or
        # None failed at the first validation or step
        ({"min_delta": -0.1}, r"min_delta must be a finite number >= 0, got -0.1"),
        ({"min_delta": math.nan}, r"min_delta must be a finite number >= 0, got nan"),
        ({"min_delta": None}, "min_delta must be a number, got None"),
        ({"clip_norm": math.nan}, "clip_norm must be > 0 or None, got nan"),
        ({"max_minutes": math.nan}, "max_minutes must be > 0 or None, got nan"),
        ({"max_minutes": "5"}, "max_minutes must be a number, got '5'"),
    ],
)
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_training_data_without_batches_is_refused():
    """An epoch without batches raises, instead of looping over empty epochs forever when
    the run is bounded by max_steps / max_minutes with many epochs (as the CLI does)."""
    ds = [(tokens(4, seed=i), tokens(4, seed=i + 9)) for i in range(5)]
    loader = DataLoader(
        ds, batch_sampler=BucketBatchSampler([4] * 5, 8, drop_last=True), collate_fn=PadCollate()
    )
    assert len(list(loader)) == 0
    model = TinyLM()
    # (1000 epochs, not the CLI's 10**9: without the check the test ends, and fails)
    tr = Trainer(
        model, sgd(model), max_epochs=1000, max_steps=5, max_minutes=0.05, carry_state=False, progress=False
    )
    with pytest.raises(ValueError, match="the training data yielded no batches in epoch 0"):
        tr.fit(loader)


@pytest.mark.parametrize("training", [True, False])
def test_evaluation_restores_each_modules_own_mode(training):
    """``evaluate_lm`` and ``evaluate_batches`` restored the mode with ``model.train(was)``, which sets
    every submodule: a part kept in eval mode (a frozen dropout or batch norm) came back in
    training mode. Each module gets its own mode back, as the tasks' ``kept_modes`` does."""
    from rnnkit.train.evaluate import evaluate_batches

    model = TinyLM(dropout=0.5).train(training)
    model.drop.train(not training)  # the user's own choice for this part
    modes = [m.training for m in model.modules()]
    evaluate_lm(model, tokens(60), 2, 10)
    assert [m.training for m in model.modules()] == modes
    tr = Trainer(model, sgd(model), progress=False)
    evaluate_batches(model, bptt_batches(tokens(60), 2, 10), tr._forward)
    assert [m.training for m in model.modules()] == modes


@pytest.mark.parametrize(
    "kw, named",
    [
        ({"patience": 3}, "patience=3"),
        ({"nt_asgd": True}, "nt_asgd=True"),
        ({"save_best": True}, "save_best=True"),
        ({"scheduler": "plateau"}, "ReduceLROnPlateau"),
        ({"val_every": 1}, "val_every=1"),  # (its default is None: set, it asks for validations)
    ],
)
def test_settings_that_act_on_validations_need_val_data(tmp_path, kw, named):
    """Early stopping, NT-ASGD, save_best, ReduceLROnPlateau and a val_every act on validations:
    without val_data they silently never acted. Refused before anything is trained or written."""
    model = TinyLM()
    opt = sgd(model)
    if kw.get("scheduler") == "plateau":
        kw = {"scheduler": torch.optim.lr_scheduler.ReduceLROnPlateau(opt)}
    tr = Trainer(model, opt, out_dir=tmp_path / "run", max_steps=2, progress=False, plot=False, **kw)
    with pytest.raises(ValueError, match=rf"{named} acts on validations: fit\(\) needs val_data, got None"):
        tr.fit(bptt_batches(tokens(200), 2, 5))
    assert tr.step == 0 and not (tmp_path / "run" / "checkpoints").exists()


def test_validation_at_end_names_the_epoch_of_its_step(tmp_path):
    """``validate_at_end`` after an epoch's last step ran once the epoch counter had moved on: its
    row (and best/'s ``epoch``) named an epoch never trained (1 of a one-epoch run), where the
    training row of the same step and a ``val_every`` validation there name epoch 0."""
    from rnnkit.train import load_checkpoint

    model = TinyLM()
    tr = Trainer(model, sgd(model, 0.1), log_every=5, val_every=3, validate_at_end=True, max_epochs=1,
                 progress=False, out_dir=str(tmp_path), save_best=True)  # fmt: skip
    tr.fit(bptt_batches(tokens(100), 2, 10), bptt_batches(tokens(40), 2, 5))
    rows = [(r["split"], r["step"], r["epoch"]) for r in tr.history]
    assert rows == [("val", 3, 0), ("train", 5, 0), ("val", 5, 0)]
    assert tr.epoch == 1  # (the counter: epochs ended, where a resume goes on)
    best = load_checkpoint(tmp_path / "best")
    assert (best["step"], best["state"]["epoch"]) == (5, 0)
