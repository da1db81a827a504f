"""Trainer: callbacks and what a run writes: metric files, progress bar, stop requests, failing
callbacks, ``out_dir`` as a path, ``tokens_per_s``."""

import json
import math
import sys

import pytest
import torch

from rnnkit.data import bptt_batches
from rnnkit.train import (
    Callback,
    JSONLLogger,
    TensorBoardLogger,
    Trainer,
    tensorboard_available,
)

from .models import TinyLM, sgd, tokens


def test_out_dir_files_and_tensorboard_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # "not installed"
    assert not tensorboard_available()
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path / "tb")
    model = TinyLM()
    tr = Trainer(model, sgd(model), out_dir=str(tmp_path), log_every=2, max_epochs=2, progress=False)
    tr.fit(bptt_batches(tokens(200), 2, 10), bptt_batches(tokens(60), 1, 10))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(2, 21, 2))
    assert {"loss", "ppl", "lr", "tokens_per_s", "grad_norm", "seq_len"} <= set(train[0])
    assert math.isclose(train[0]["ppl"], math.exp(train[0]["loss"]))
    assert sum(r["split"] == "val" for r in rows) == 2
    csv_lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("split,step,epoch,loss") and len(csv_lines) == len(rows) + 1
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "tensorboard").exists()
    assert (tmp_path / "checkpoints" / "latest").is_file()


def test_progress_bar_shows_loss(capsys):
    model = TinyLM()
    Trainer(model, sgd(model), progress=True, log_every=1, max_steps=3).fit(bptt_batches(tokens(200), 2, 5))
    err = capsys.readouterr().err
    assert "3/3" in err and "loss=" in err and "tok_s=" in err


def test_callback_that_stops_training_is_the_stop_reason():
    class StopAt(Callback):
        def __init__(self, step, reason=None):
            self.at, self.reason = step, reason

        def on_step_end(self, trainer, logs):
            if trainer.step == self.at:
                trainer.should_stop = True
                if self.reason:
                    trainer.stop_reason = self.reason

    model = TinyLM()
    data = bptt_batches(tokens(200), 2, 5)  # 20 batches per epoch
    out = Trainer(model, sgd(model), max_epochs=3, callbacks=[StopAt(2)], progress=False).fit(data)
    assert (out["step"], out["epoch"], out["stop_reason"]) == (2, 0, "callback")
    stop = StopAt(3, "diverged")
    out = Trainer(model, sgd(model), max_epochs=3, callbacks=[stop], progress=False).fit(data)
    assert (out["step"], out["stop_reason"]) == (3, "diverged")
    out = Trainer(model, sgd(model), max_epochs=1, progress=False).fit(data)
    assert out["stop_reason"] == "max_epochs"


def test_a_failing_on_fit_start_closes_what_earlier_callbacks_opened(tmp_path):
    """``on_fit_start`` was sent before fit's ``try``: when a later callback's raised, an earlier
    one's file (a TensorBoard writer, a metrics file) was left open. Those that started are ended."""
    from rnnkit.train.outdir import _HELD

    class Failing(Callback):
        ended = False

        def on_fit_start(self, trainer):
            raise RuntimeError("cannot start")

        def on_fit_end(self, trainer):
            self.ended = True  # never started: nothing to end

    model = TinyLM()
    jsonl, failing = JSONLLogger(tmp_path / "m.jsonl"), Failing()
    tr = Trainer(model, sgd(model), out_dir=str(tmp_path), callbacks=[jsonl, failing], progress=False)
    with pytest.raises(RuntimeError, match="cannot start"):
        tr.fit(bptt_batches(tokens(60), 2, 10))
    assert jsonl.file is None and not failing.ended
    assert not _HELD  # out_dir's lock released


def test_a_failing_on_fit_end_still_ends_the_other_callbacks(tmp_path):
    """A callback whose ``on_fit_end`` raised stopped the loop that ends them: the callbacks after
    it (the default metrics files, listed after the user's) were never ended and their files stayed
    open (a ResourceWarning when collected). Every started callback is ended; the error is raised."""
    from rnnkit.train.outdir import _HELD

    class Failing(Callback):
        def on_fit_end(self, trainer):
            raise RuntimeError("cannot end")

    model = TinyLM()
    jsonl = JSONLLogger(tmp_path / "m.jsonl")
    tr = Trainer(model, sgd(model), max_steps=2, out_dir=str(tmp_path), callbacks=[Failing(), jsonl],
                 progress=False)  # fmt: skip
    with pytest.raises(RuntimeError, match="cannot end"):
        tr.fit(bptt_batches(tokens(60), 2, 10))
    assert jsonl.file is None
    assert all(getattr(cb, "file", None) is None for cb in tr.callbacks)  # metrics.jsonl and .csv
    assert not _HELD  # out_dir's lock released


def test_a_failing_on_fit_end_does_not_hide_the_error_fit_failed_with(tmp_path, caplog):
    """When training failed and then a callback's ``on_fit_end`` (a logger's close) raised too,
    fit raised the callback's error: the training error, the one to fix, was only its context.
    The training error goes on, with the callbacks' errors as notes (and logged); all are ended."""
    from rnnkit.train.outdir import _HELD

    class Boom(Callback):
        def on_step_end(self, trainer, logs):
            raise ValueError("training failed")

    class Failing(Callback):
        def on_fit_end(self, trainer):
            raise RuntimeError("cannot end")

    model = TinyLM()
    jsonl = JSONLLogger(tmp_path / "m.jsonl")
    tr = Trainer(model, sgd(model), max_steps=2, out_dir=str(tmp_path), callbacks=[Failing(), Boom(), jsonl],
                 progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="training failed") as info:
        tr.fit(bptt_batches(tokens(60), 2, 10))
    assert any("Failing.on_fit_end raised RuntimeError('cannot end')" in n for n in info.value.__notes__)
    assert "Failing.on_fit_end" in caplog.text and "cannot end" in caplog.text
    assert jsonl.file is None
    assert all(getattr(cb, "file", None) is None for cb in tr.callbacks)  # metrics.jsonl and .csv
    assert not _HELD  # out_dir's lock released


def test_a_logger_failing_in_on_fit_start_closes_its_file(tmp_path):
    """JSONLLogger.on_fit_start opened its file, then wrote the header (and a loaded run's rows):
    when that write raised (a full disk), the logger had not started, so fit() never ended it,
    and its file stayed open. It closes the file itself before the error goes on."""

    class Full(JSONLLogger):
        def header(self):
            raise OSError(28, "No space left on device")

    model = TinyLM()
    log = Full(tmp_path / "m.jsonl")
    tr = Trainer(model, sgd(model), max_steps=2, callbacks=[log], progress=False)
    with pytest.raises(OSError, match="No space left"):
        tr.fit(bptt_batches(tokens(60), 2, 10))
    assert log.file is None


def test_out_dir_may_be_a_path(tmp_path):
    """Trainer(out_dir=pathlib.Path(...)) trained and then failed writing its first checkpoint
    ('Object of type PosixPath is not JSON serializable': the config goes into state.json)."""
    model = TinyLM()
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_steps=2, out_dir=tmp_path / "run",
                 progress=False)  # fmt: skip
    assert tr.fit(bptt_batches(tokens(200), 2, 10))["step"] == 2
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["config"]["out_dir"] == str(tmp_path / "run")
    with pytest.raises(ValueError, match="out_dir must be a path"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), out_dir=3)


class _ClockedLM(TinyLM):
    """TinyLM whose forward advances a fake ``time.perf_counter``: 1 s per training forward,
    100 s per evaluation forward (a slow validation)."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock

    def forward(self, x, state=None):
        self.clock[0] += 1.0 if self.training else 100.0
        return super().forward(x, state)


def test_tokens_per_s_is_training_throughput(monkeypatch):
    """``tokens_per_s``: the interval's targets over its training time. Validations inside the
    interval (here 100 s each) counted as training time (a rate 100 times too low), and a
    second ``fit()`` divided the targets of steps before it by the time since it started."""
    import rnnkit.train.trainer as trainer_mod

    clock = [0.0]
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: clock[0])
    model = _ClockedLM(clock)
    tr = Trainer(model, sgd(model), log_every=2, val_every=2, max_steps=3, progress=False)
    train, val = bptt_batches(tokens(200), 2, 5), bptt_batches(tokens(40), 2, 5)
    tr.fit(train, val)
    tr.config.max_steps = 6
    tr.fit(train, val)
    rows = [r for r in tr.history if r["split"] == "train"]
    assert [r["step"] for r in rows] == [2, 4, 6]
    # 10 targets a step (2 streams x 5), 1 s a step; the second fit() logs steps 3 and 4 at step
    # 4, of which it trained step 4 alone: the rate of step 4 (step 3's was in the first fit)
    assert [r["tokens_per_s"] for r in rows] == [pytest.approx(10.0)] * 3
