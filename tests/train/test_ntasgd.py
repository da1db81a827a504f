"""NT-ASGD's averaging object on its own: applying, swapping and loading its state."""

import logging

import pytest
import torch

from rnnkit.train import NTASGD


def test_apply_before_the_trigger_keeps_the_weights():
    """apply() before averaging had triggered failed with zip()'s bare "argument 2 is shorter";
    like swapped(), it now leaves the weights as they are (nothing has been averaged)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    before = [p.detach().clone() for p in model.parameters()]
    avg = NTASGD(model)
    avg.apply()
    with avg.swapped():
        pass
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


def test_model_must_be_a_module():
    """NTASGD(None) failed on "'NoneType' object has no attribute 'parameters'"."""
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got NoneType"):
        NTASGD(None)


@pytest.mark.parametrize("bad", [0, 2.5, "5", True, None])
def test_nonmono_must_be_a_positive_int(bad):
    """A float or a str was taken and failed at a later validation, mid-run ("slice indices must be
    integers", "'<' not supported"), True ran as 1: refused up front, as TrainConfig refuses them."""
    with pytest.raises(ValueError, match=f"nonmono must be an int >= 1, got {bad!r}"):
        NTASGD(torch.nn.Linear(2, 3), nonmono=bad)


def _triggered(model, nonmono=1):
    avg = NTASGD(model, nonmono=nonmono)
    for v in [2.0, 3.0, 2.5]:
        avg.observe(v, step=0)
    assert avg.triggered
    return avg


def test_load_state_dict_checks_the_averages_against_the_model():
    """A state of another model with as many parameters loaded silently (apply() then failed in
    copy_ or broadcast a wrong average); a triggered state without averages failed at the next
    update. Now clear errors naming expected and received shapes, and nothing is changed."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    avg = NTASGD(model)
    other = _triggered(torch.nn.Linear(3, 2)).state_dict()
    with pytest.raises(ValueError, match=r"averaged tensor 0 has shape \(2, 3\), the parameter \(3, 2\)"):
        avg.load_state_dict(other)
    assert not avg.triggered and avg.history == [] and avg.averages == []
    broken = {**_triggered(model).state_dict(), "averages": []}
    with pytest.raises(ValueError, match="triggered at step 0 but holds no averages"):
        avg.load_state_dict(broken)
    stale = {**NTASGD(model).state_dict(), "averages": _triggered(model).state_dict()["averages"]}
    with pytest.raises(ValueError, match="not triggered but holds 2 averaged tensors"):
        avg.load_state_dict(stale)
    good = _triggered(model)
    avg.load_state_dict(good.state_dict())
    assert avg.triggered and all(torch.equal(a, b) for a, b in zip(avg.averages, good.averages, strict=True))


def test_average_includes_the_weights_at_the_trigger():
    """The module docstring's claim: the mean of the weights at the trigger and after each
    update since (Algorithm 1 of Merity et al.), not torch.optim.ASGD's average."""
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    avg = _triggered(model)
    for w in [1.0, 2.0, 6.0]:
        with torch.no_grad():
            model.weight.fill_(w)
        avg.update()
    assert avg.n_averaged == 3
    with avg.swapped():
        assert model.weight.item() == pytest.approx((3.0 + 1.0 + 2.0 + 6.0) / 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_average_of_half_parameters_is_kept_in_float32(dtype):
    """The running mean was kept in the parameters' dtype: in bfloat16 an update's share of the
    difference fell below the rounding step after ~20 updates and the mean stalled (0.961 for
    0.997). Now float32 averages, rounded to the parameter's dtype when copied in; a checkpoint
    round trip keeps them."""
    model = torch.nn.Linear(1, 1, bias=False).to(dtype)
    with torch.no_grad():
        model.weight.fill_(0.0)
    avg = _triggered(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(300):
        avg.update()
    assert avg.averages[0].dtype == torch.float32
    assert avg.averages[0].item() == pytest.approx(300 / 301, abs=1e-6)
    back = NTASGD(model, nonmono=1)
    back.load_state_dict(avg.state_dict())
    assert torch.equal(back.averages[0], avg.averages[0])
    back.apply()
    assert model.weight.dtype == dtype and model.weight.item() == float(torch.tensor(300 / 301).to(dtype))


def _saved_with_nonmono_5_resumed_with_2():
    """(model, the state of an NT-ASGD with nonmono=5 that observed one loss, one with nonmono=2)."""
    model = torch.nn.Linear(2, 3)
    before = NTASGD(model, nonmono=5)
    before.observe(1.0, step=0)
    return model, before.state_dict(), NTASGD(model, nonmono=2)


def test_a_saved_nonmono_that_differs_is_reported(caplog):
    """load_state_dict used the configured nonmono and ignored the saved one without a word: a
    resumed run then triggered on another rule. The configured value still decides (the run's
    configuration is its source of truth), with a warning naming both while it still matters."""
    model, saved, resumed = _saved_with_nonmono_5_resumed_with_2()
    with caplog.at_level(logging.WARNING, logger="rnnkit.train"):
        resumed.load_state_dict(saved)
        NTASGD(model, nonmono=1).load_state_dict(_triggered(model).state_dict())  # same: silent
        NTASGD(model, nonmono=3).load_state_dict(_triggered(model).state_dict())  # triggered: moot
    assert resumed.nonmono == 2 and resumed.history == [1.0]
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [
        "NT-ASGD: the checkpoint was made with nonmono=5, resuming with nonmono=2 (the configured "
        "value is used; set it to 5 to continue the run as it was)"
    ]


def test_a_saved_nonmono_that_differs_is_reported_by_rank_0_alone(caplog, monkeypatch):
    """Under DDP every rank loads the checkpoint, and every rank logged the warning (N copies),
    though rank 0 alone logs. Rank 1 (of 2, faked) loads the same state silently."""
    from rnnkit.train import distributed as dist

    monkeypatch.setattr(dist, "is_main_process", lambda: False)
    _, saved, resumed = _saved_with_nonmono_5_resumed_with_2()
    with caplog.at_level(logging.WARNING, logger="rnnkit.train"):
        resumed.load_state_dict(saved)
    assert resumed.nonmono == 2 and resumed.history == [1.0] and not caplog.records


def test_a_resume_refused_for_its_nt_asgd_state_loads_nothing(tmp_path):
    """The NT-ASGD state was checked only when it loaded, after the model and the optimizer: a
    checkpoint whose state does not fit raised with the model already holding its weights (a
    refused resume must leave everything as it was). It is checked with the others now."""
    from rnnkit.data import bptt_batches
    from rnnkit.train import Trainer

    from .models import TinyLM, tokens

    def trainer():
        torch.manual_seed(0)
        model = TinyLM()
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), nt_asgd=True, nonmono=1,
                       val_every=1, max_steps=4, out_dir=tmp_path, progress=False, plot=False,
                       tensorboard=False)  # fmt: skip

    tr = trainer()
    scripted = iter([2.0, 3.0, 2.5, 2.4])
    tr.evaluate = lambda data: {"loss": next(scripted), "ppl": 1.0, "tokens": 1}
    tr.fit(bptt_batches(tokens(200), 2, 5), val_data=[None])
    assert tr.ntasgd.triggered
    tr.ntasgd.triggered_at = None  # averages without a trigger: a state load_state_dict refuses
    ckpt = tr.save()
    fresh = trainer()
    before = {k: v.clone() for k, v in fresh.raw_model.state_dict().items()}
    with pytest.raises(ValueError, match="NT-ASGD state is not triggered but holds"):
        fresh.load(ckpt)
    assert all(torch.equal(v, before[k]) for k, v in fresh.raw_model.state_dict().items())
