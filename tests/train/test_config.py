"""TrainConfig's checks of its settings' types: a switch given a str or an int, a count or a
number given a numpy scalar or a device given a ``torch.device``."""

import dataclasses
import re
from fractions import Fraction

import numpy as np
import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import TrainConfig, Trainer, load_checkpoint
from rnnkit.train.config import FREE_FIELDS, STEP_FIELDS

from .models import TinyLM, tokens

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


@pytest.mark.parametrize(
    "kw",
    [
        {"max_steps": np.int64(3)},
        {"keep_last": np.int32(2)},
        {"max_minutes": np.float32(5.0)},
        {"clip_value": Fraction(1, 2)},
        {"device": torch.device("cpu")},
    ],
)
def test_numpy_numbers_and_a_torch_device_are_stored_as_json(tmp_path, kw):
    """Taken, but kept as given: the checkpoint after the last step failed to write its config
    ("Object of type int64 is not JSON serializable"), losing the run."""
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), out_dir=tmp_path,
                 progress=False, plot=False, tensorboard=False, **{"max_steps": 3, **kw})  # fmt: skip
    tr.fit(bptt_batches(tokens(200), 2, 5))
    ((name, value),) = kw.items()
    stored = load_checkpoint(tmp_path / "checkpoints")["config"][name]
    assert stored == (str(value) if name == "device" else value) and stored == getattr(tr.config, name)
    assert type(stored) in (int, float, str) and type(getattr(tr.config, name)) is type(stored)


def test_device_must_be_a_str_or_a_torch_device():
    with pytest.raises(ValueError, match=r"^device must be a str or torch.device or None, got 0$"):
        TrainConfig(device=0)


@pytest.mark.parametrize(
    ("name", "bad", "msg"),
    [
        ("max_steps", "7", "max_steps must be an int, got '7'"),
        ("max_steps", -1, "max_steps must be > 0 or None, got -1"),
        ("keep_last", 0, "keep_last must be >= 1, got 0"),
        ("nt_asgd", "no", "nt_asgd must be a bool, got 'no'"),
        ("checkpoint_every", 5, "checkpoint_every=5 needs out_dir (where the checkpoints go), got None"),
    ],
)
def test_a_setting_assigned_later_is_checked_as_at_creation(name, bad, msg):
    """The checks ran at creation alone: trainer.config.max_steps = "7" (or -1) was taken and failed
    mid-run (or never stopped). An assigned setting gets the same error and keeps its old value."""
    cfg = TrainConfig()
    old = getattr(cfg, name)
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        setattr(cfg, name, bad)
    assert getattr(cfg, name) == old and cfg == TrainConfig()


def test_a_setting_assigned_later_is_stored_as_at_creation():
    cfg = TrainConfig()
    cfg.max_steps, cfg.clip_norm, cfg.device = np.int64(6), np.float32(0.5), torch.device("cpu")
    assert (cfg.max_steps, cfg.clip_norm, cfg.device) == (6, 0.5, "cpu")
    assert (type(cfg.max_steps), type(cfg.clip_norm)) == (int, float)


@pytest.mark.parametrize("bad", ["", " ", "cpu ", "gpu"])
def test_device_must_name_a_device(bad):
    """device="" was taken for None: the trainer ran on the model's device without a word (a
    misspelt name failed in Trainer alone, with torch's RuntimeError)."""
    with pytest.raises(
        ValueError, match=rf"^device must name a device \('cpu', 'cuda:0'\) or be None, got {bad!r}: "
    ):
        TrainConfig(device=bad)
    model = TinyLM()
    with pytest.raises(ValueError, match="^device must name a device"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), device=bad)


def test_every_setting_is_a_step_setting_or_one_a_resume_may_change():
    """A field added to TrainConfig is placed on purpose: in STEP_FIELDS (a resume that changes it
    is warned of) or in FREE_FIELDS (a resume may change it without a word; nonmono: NT-ASGD warns).
    val_every is a step setting: its validations move NT-ASGD's trigger (it passed silently)."""
    resumable = {
        "max_epochs", "max_steps", "max_minutes", "patience", "validate_at_end", "min_delta",
        "nonmono", "log_every", "out_dir", "checkpoint_every", "keep_last", "save_best", "resume",
        "progress", "tensorboard", "plot", "device",
    }  # fmt: skip
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(FREE_FIELDS) == resumable and len(FREE_FIELDS) == len(resumable)
    assert "val_every" in STEP_FIELDS and len(set(STEP_FIELDS)) == len(STEP_FIELDS)
    assert not resumable & set(STEP_FIELDS)
    assert names == resumable | set(STEP_FIELDS)


def test_clip_norm_and_clip_value_are_exclusive():
    """Both were taken and both applied, the norm's scaling then the clamp, an order nothing said:
    the pair is refused (as Keras refuses it), at creation and when assigned later."""
    msg = (
        r"^clip_norm and clip_value are exclusive \(choose one way to clip\), "
        r"got clip_norm=1.0, clip_value=0.5$"
    )
    with pytest.raises(ValueError, match=msg):
        TrainConfig(clip_norm=1.0, clip_value=0.5)
    cfg = TrainConfig(clip_norm=1.0)
    with pytest.raises(ValueError, match=msg):
        cfg.clip_value = 0.5
    assert cfg.clip_value is None and TrainConfig(clip_value=0.5).clip_norm is None
