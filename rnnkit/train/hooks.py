"""The end of the callbacks a :meth:`~rnnkit.train.Trainer.fit` started: each one is ended, whatever
the others raise, and the error the fit failed with is not hidden by theirs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rnnkit.train.callbacks import Callback
    from rnnkit.train.trainer import Trainer

__all__ = ["end_callbacks"]

log = logging.getLogger("rnnkit.train")


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)``, also on Python 3.10 (supported), whose exceptions have no
    ``add_note``: there the AttributeError hid the very error the note was for. The note goes to
    ``__notes__`` as 3.11 keeps it (3.10's tracebacks do not show it; the log has it)."""
    add = getattr(error, "add_note", None)
    if add is not None:
        add(note)
    else:
        error.__notes__ = [*getattr(error, "__notes__", []), note]


def end_callbacks(trainer: Trainer, started: list[Callback], failure: BaseException | None) -> None:
    """``on_fit_end`` of each callback in ``started``, in order, also after another's raised (else
    those after it, the default metrics files among them, stayed open). ``failure``, the error the
    fit failed with (its caller raises it), goes on; without one the first callback's error is
    raised. The others are logged (logger ``rnnkit.train``) and added to the one raised as notes."""
    errors: list[tuple[Callback, Exception]] = []
    for cb in started:
        try:
            cb.on_fit_end(trainer)
        except Exception as e:
            errors.append((cb, e))
    if errors:
        raised = failure if failure is not None else errors[0][1]
        for cb, e in errors:
            if e is not raised:
                log.error("%s.on_fit_end raised while fit() ended", type(cb).__name__, exc_info=e)
                _add_note(raised, f"then {type(cb).__name__}.on_fit_end raised {e!r}")
        if failure is None:
            raise raised
