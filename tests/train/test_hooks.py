"""rnnkit.train.hooks.end_callbacks: every started callback ended, the fit's own error kept."""

import pytest
import torch

from rnnkit.train.callbacks import Callback
from rnnkit.train.hooks import end_callbacks


class _Failing(Callback):
    def on_fit_end(self, trainer):
        raise RuntimeError("cannot end")


class _NoNotes(ValueError):
    """An error as Python 3.10 (which rnnkit supports) makes them: without ``add_note``."""

    @property
    def add_note(self):
        raise AttributeError("add_note")


def test_the_fit_error_keeps_the_callbacks_errors_where_exceptions_have_no_add_note():
    """``add_note`` is Python 3.11's: on 3.10 the note raised AttributeError from fit()'s finally,
    which hid the training error it was to keep (and, without one, the callback's own error).
    The notes go to ``__notes__`` there, as 3.11 keeps them."""
    failure = _NoNotes("training failed")
    end_callbacks(None, [_Failing()], failure)  # the caller then raises failure
    assert failure.__notes__ == ["then _Failing.on_fit_end raised RuntimeError('cannot end')"]


def test_without_a_fit_error_the_first_callback_error_is_raised_with_the_others_as_notes():
    with pytest.raises(RuntimeError, match="cannot end") as info:
        end_callbacks(None, [_Failing(), _Failing()], None)
    assert info.value.__notes__ == ["then _Failing.on_fit_end raised RuntimeError('cannot end')"]


def test_a_failed_fit_leaves_no_reference_cycle_holding_its_error(tmp_path):
    """fit() kept the error it failed with in a local for the callbacks' ending; that error's
    traceback holds fit()'s frame, so error and frame (the step's tensors with it) made a cycle
    that outlived the caller's ``except`` until the cyclic GC ran (a retry after an out-of-memory
    error found the memory still taken). Once the error is dropped, it is gone."""
    import gc
    import weakref

    from rnnkit.data import bptt_batches
    from rnnkit.train import Trainer

    from .models import TinyLM, tokens

    class Boom(RuntimeError):
        pass

    class Raising(Callback):
        def on_step_end(self, trainer, logs):
            raise Boom("out of memory")

    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tr = Trainer(model, opt, max_steps=2, callbacks=[Raising()], progress=False)
    gc.collect()
    gc.disable()
    try:
        try:
            tr.fit(bptt_batches(tokens(60), 2, 10))
        except Boom as e:
            ref = weakref.ref(e)
        assert ref() is None
    finally:
        gc.enable()
