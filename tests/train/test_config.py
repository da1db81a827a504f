"""TrainConfig's checks of its settings' types: a switch given a str or an int, a count or a
number given a numpy scalar or a device given a ``torch.device``."""

import dataclasses

import numpy as np
import pytest

from rnnkit.train import TrainConfig

SWITCHES = [f.name for f in dataclasses.fields(TrainConfig) if f.type in ("bool", "bool | None")]


def test_every_switch_is_checked():
    named = ["stateful", "carry_state", "batch_first", "scale_lr_by_seq_len", "nt_asgd", "validate_at_end"]
    assert set(SWITCHES) >= {*named, "save_best", "resume", "progress", "tensorboard", "plot"}


@pytest.mark.parametrize("name", SWITCHES)
@pytest.mark.parametrize("bad", ["no", "false", 1, 0, 1.0])
def test_a_switch_refuses_what_is_not_a_bool(name, bad):
    """nt_asgd="no" (a truthy str) turned NT-ASGD on without a word, as any non-empty str or 1 did
    for every switch but save_best and validate_at_end."""
    kind = "a bool or None" if name == "progress" else "a bool"
    with pytest.raises(ValueError, match=f"^{name} must be {kind}, got {bad!r}$"):
        TrainConfig(**{name: bad, "out_dir": "x"})


@pytest.mark.parametrize("name", SWITCHES)
def test_a_switch_takes_a_numpy_bool_as_a_bool(name):
    cfg = TrainConfig(**{name: np.bool_(name != "resume"), "out_dir": "x"})
    assert type(getattr(cfg, name)) is bool and getattr(cfg, name) is (name != "resume")


def test_resume_given_a_str_is_named_not_taken_for_true():
    """The check of resume's out_dir came first: resume="no" asked for an out_dir."""
    with pytest.raises(ValueError, match="^resume must be a bool, got 'no'$"):
        TrainConfig(resume="no")


def test_progress_may_be_none():
    assert TrainConfig(progress=None).progress is None
