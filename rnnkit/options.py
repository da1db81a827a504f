"""The options of the regularizers, checked: probabilities, zoneout's per-state form, and the data
descriptors that check them on every assignment to a layer (``layer.zoneout = 0.0`` or
``layer.weight_drop = 0.2`` after construction takes effect at the next call; a bad value is a
``ValueError`` there, not at the next training call).

:mod:`rnnkit.regularizers` re-exports :func:`check_prob` and :func:`zoneout_probs`.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _checks

__all__ = ["check_prob", "zoneout_probs", "ProbOption", "ZoneoutOption"]


def check_prob(name: str, p: object) -> float:
    """``p`` as a float in ``[0, 1]``, else a ``ValueError`` naming ``name``."""
    if not _checks.is_real(p) or not 0 <= p <= 1:  # numpy's too
        raise ValueError(f"{name} must be a number in [0, 1], got {p!r}")
    return float(p)


class ProbOption:
    """A regularizer's probability attribute (a data descriptor), checked by :func:`check_prob`
    on every assignment, at construction or later (``layer.weight_drop = 0.2``): an invalid value
    assigned as a plain attribute failed only at the next training call, in a mask generator's words."""

    def __init__(self, below_one: bool = False) -> None:
        self.below_one = below_one  # [0, 1): a probability of 1 would never let the value change

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:  # (an AttributeError, as for any attribute: hasattr and getattr's default work)
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {self.name!r}") from None

    def __set__(self, obj, value) -> None:
        if self.below_one and not (_checks.is_real(value) and 0 <= value < 1):
            raise ValueError(f"{self.name} must be a number in [0, 1), got {value!r}")
        obj.__dict__[self.name] = check_prob(self.name, value)


def zoneout_probs(zoneout: object, state_names: Sequence[str]) -> tuple[float, ...]:
    """Per-state-component zoneout probabilities, in the order of ``state_names``.

    ``zoneout`` is a number (every component), a ``dict`` ``{state name: p}`` (missing
    names get 0), or — for cells whose state holds ``h`` and ``c`` (the LSTM family) — a pair
    ``(p_c, p_h)`` in the order of Krueger et al. (2017).
    """
    names = tuple(state_names)
    if isinstance(zoneout, dict):
        unknown = set(zoneout) - set(names)
        if unknown:
            raise ValueError(f"zoneout keys must be state names {names}, got {sorted(unknown)}")
        return tuple(check_prob(f"zoneout[{n!r}]", zoneout.get(n, 0.0)) for n in names)
    if isinstance(zoneout, (tuple, list)):
        if not {"h", "c"} <= set(names):
            raise ValueError(
                "zoneout=(p_c, p_h) needs a cell whose state holds h and c (LSTM); this cell's "
                f"state is {names}: pass a number or a dict {{state name: p}}, got {zoneout!r}"
            )
        if len(zoneout) != 2:  # (an LSTM's: its message said the state lacked h and c)
            raise ValueError(f"zoneout=(p_c, p_h) takes two probabilities, got {len(zoneout)}: {zoneout!r}")
        by_name = {"c": check_prob("zoneout p_c", zoneout[0]), "h": check_prob("zoneout p_h", zoneout[1])}
        return tuple(by_name.get(n, 0.0) for n in names)
    p = check_prob("zoneout", zoneout)
    return (p,) * len(names)


class _Frozen(dict):
    """A zoneout dict as a layer holds it: read-only, so that ``layer.zoneout["h"] = 0.5`` (which
    would change the repr, not the probabilities) is an error pointing at the assignment."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("a layer's zoneout is read-only: assign a new one (layer.zoneout = {...})")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = _refuse  # type: ignore[assignment]

    def __reduce__(self):  # (pickle and deepcopy would set the items one by one)
        return _Frozen, (dict(self),)


class ZoneoutOption:
    """The ``zoneout`` attribute of a layer stack or a step cell (a data descriptor).

    Assigning it, at construction or later (``layer.zoneout = 0.0`` to train on without zoneout),
    checks the value and re-derives the owner's ``zoneout_probs``, which every path reads: the
    probabilities of each state component (a tuple per layer, a list of them for a stack with
    ``cells``; one tuple for a step cell's ``cell``). Assigned as a plain attribute, a new value
    changed the repr alone; the layer went on with the old probabilities, silently.
    """

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        d = obj.__dict__  # (a module pickled before this descriptor holds its value as "zoneout")
        return d["_zoneout_value"] if "_zoneout_value" in d else d.get("zoneout", 0.0)

    def __set__(self, obj, value) -> None:
        if hasattr(obj, "cells"):
            probs = [zoneout_probs(value, c.state_names) for c in obj.cells]
        else:
            probs = zoneout_probs(value, obj.cell.state_names)
        # a copy of a dict or list: the caller's object, changed later, would change the repr alone
        value = (
            _Frozen(value) if isinstance(value, dict) else tuple(value) if isinstance(value, list) else value
        )
        d, keys = obj.__dict__, ("zoneout_probs", "_zoneout_value")
        old = {k: d[k] for k in keys if k in d}
        d["zoneout_probs"], d["_zoneout_value"] = probs, value
        if "_names" in d and hasattr(obj, "flatten_parameters"):  # (built: not in __init__)
            # zoneout on a layer with impl="torch" is refused, as at construction and as assigning
            # impl="torch" to a zoneout layer (it was kept, and every later call failed); the old
            # value stays
            from .dispatch import check_impl_possible  # (dispatch imports this module)

            try:
                check_impl_possible(obj)
            except ValueError:
                for k in keys:  # (a module pickled before this descriptor holds no "_zoneout_value")
                    if k in old:
                        d[k] = old[k]
                    else:
                        d.pop(k)
                raise
            obj.flatten_parameters()  # zoneout off: torch's kernels, which want cuDNN's flat weights
