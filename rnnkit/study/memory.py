"""The ``memory`` study: the memory-horizon benchmark of :mod:`rnnkit.diagnostics.memory`
(copy-memory and +1 detection) across every cell family rnnkit provides.

One run = one architecture × one trial: :func:`rnnkit.diagnostics.memory.memory_horizon`
with the trial's learning rate and seed and ``steps`` steps per lag. Its metric is the mean
over the tasks of the horizon (the longest lag solved before the first failure); the
per-task horizons and every lag's accuracy are kept in the run's record.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from torch import nn

from rnnkit.arch import build_recurrent, recurrent_families

from .runner import Arch, Spec


@dataclass(frozen=True)
class ArchVariant:
    """A study architecture in the shape :func:`memory_horizon` takes (``label``, ``build``)."""

    label: str
    config: dict

    def build(self, input_size: int, hidden_size: int) -> nn.Module:
        return build_recurrent({**self.config, "hidden": hidden_size}, input_size, batch_first=True)


def _diagnostics():
    try:
        from rnnkit.diagnostics import memory
    except ImportError as e:  # pragma: no cover - before the diagnostics land
        raise ImportError("the memory study needs rnnkit.diagnostics.memory (the diagnostics issue)") from e
    return memory


def available(archs: list[Arch]) -> list[Arch]:
    """The architectures whose family this rnnkit has (parallel-in-time layers are optional)."""
    fams = recurrent_families()
    return [a for a in archs if a.config["cell"] in fams]


def memory_run(spec: Spec, steps: int) -> dict:
    """One run of the benchmark; returns the record's result fields."""
    mem = _diagnostics()
    s = spec.settings
    wanted = {"hidden_size": s["hidden_size"], "steps": steps, "batch_size": s["batch"],
              "lr": spec.hparams["lr"], "eval_every": max(1, steps // 6), "threshold": s["threshold"],
              "lags": tuple(s["lags"]), "seed": spec.trial}  # fmt: skip
    known = {f.name for f in fields(mem.Budget)}
    budget = mem.Budget(**{k: v for k, v in wanted.items() if k in known})
    res = mem.memory_horizon([ArchVariant(spec.arch.name, spec.arch.config)], tasks=s["tasks"], budget=budget)
    horizons = res.horizon[spec.arch.name]
    metric = sum(horizons.values()) / len(horizons)
    return {"metric": metric, "test": metric, "horizons": horizons, "lags": res.rows, "steps": steps,
            "hidden": s["hidden_size"], "stopped": None}  # fmt: skip
