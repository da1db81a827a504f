"""rnnkit.train.hooks.end_callbacks: every started callback ended, the fit's own error kept."""

import pytest

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
