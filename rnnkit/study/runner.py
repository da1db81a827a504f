"""The budgeted grid: architectures × trials, one shared random hyperparameter search.

Trial ``k`` of a study draws its hyperparameters from a generator seeded by ``k`` alone,
so every architecture is trained with the *same* ``K`` hyperparameter settings, the same
initialization seed and the same data order: a paired comparison, as in Greff et al.
(2017) and Jozefowicz et al. (2015), who ran one random search per architecture.

Budget: ``budget_minutes`` is the wall-clock for the whole grid. Before the first run the
cost of one training step, one validation and one test of every architecture is measured; every run
then gets the *same number of steps*, the most that fit the budget (papers compare at equal
numbers of updates; a time share per run would starve the slower, unfused variants). A run
stops early past three times its estimate (recorded as ``"stopped": "time"``).

Resume: every finished run is appended (one JSON line, flushed and fsynced) to
``runs.jsonl``; ``study.json`` keeps the settings and the step count, so a restarted study
skips the finished runs and repeats at most the one that was in flight. Asking for more
trials later extends the same grid.

Parallelism: ``workers > 1`` runs the grid over a process pool (the parent writes the
records; when a run fails, no new run starts, the runs in flight finish and are recorded,
then the failure is raised); under ``torchrun`` each rank takes every ``world_size``-th run and writes
``runs.rank{r}.jsonl``, and rank 0 writes the report.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnkit.train import get_rng_state, seed_everything, set_rng_state
from rnnkit.train.callbacks import restore_record, strict_record


@dataclass(frozen=True)
class Arch:
    """One architecture of a study: a display name and a :func:`rnnkit.arch.build_recurrent`
    config ``{"cell", "hidden", "layers", "dropout", "options"}``."""

    name: str
    config: dict


@dataclass
class Study:
    """A study: what is compared, on what, with which search space and which paper numbers.

    Generic studies give ``prepare(settings) -> data``, ``build(spec, data) -> model``,
    ``loss(model, data, spec, rng) -> scalar`` (one training batch) and
    ``evaluate(model, data, split) -> metric``; the runner owns the training loop. A study
    with its own loop gives ``run_fn(spec, steps) -> record fields`` instead. ``validate(settings,
    archs)`` (optional) raises for settings no run of ``archs`` could use, before ``study.json`` is
    written (an error in the first run came after it, and the corrected rerun was then refused).
    """

    name: str
    title: str
    archs: list[Arch]
    settings: dict
    space: Callable[[dict], dict]
    metric: str
    higher_is_better: bool
    paper: dict[str, float | None] = field(default_factory=dict)
    paper_source: str = ""
    reference: str = ""  # the baseline of the significance tests
    prepare: Callable[[dict], Any] | None = None
    build: Callable[[Spec, Any], nn.Module] | None = None
    loss: Callable[..., torch.Tensor] | None = None
    evaluate: Callable[[nn.Module, Any, str], float] | None = None
    run_fn: Callable[[Spec, int], dict] | None = None
    default_seeds: int = 3
    default_budget_minutes: float = 30.0
    curves: bool = False  # plot metric vs training wall-clock (chung)
    validate: Callable[[dict, list[Arch]], None] | None = None


@dataclass(frozen=True)
class Spec:
    """One run of the grid."""

    study: str
    arch: Arch
    trial: int
    hparams: dict
    settings: dict

    @property
    def key(self) -> str:
        return f"{self.arch.name}#{self.trial}"


def sample_hparams(space: dict, trial: int) -> dict:
    """Trial ``trial``'s hyperparameters; depends on ``trial`` and ``space`` only.

    ``space``: name -> ``("log", lo, hi)`` (log-uniform), ``("uniform", lo, hi)`` or
    ``("choice", [values])``.
    """
    rng = np.random.default_rng([20150707, trial])
    out = {}
    for name in sorted(space):
        kind, *args = space[name]
        if kind == "log":
            out[name] = float(np.exp(rng.uniform(np.log(args[0]), np.log(args[1]))))
        elif kind == "uniform":
            out[name] = float(rng.uniform(args[0], args[1]))
        elif kind == "choice":
            v = args[0][int(rng.integers(len(args[0])))]
            out[name] = v.item() if hasattr(v, "item") else v
        else:
            raise ValueError(f"hyperparameter {name}: kind must be log, uniform or choice, got {kind!r}")
    return out


# -- the training loop of generic studies --------------------------------------------------
_DATA: dict[str, Any] = {}  # prepared data, once per process


def study_data(study: Study, settings: dict) -> Any:
    key = study.name + json.dumps(settings, sort_keys=True, default=str)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = study.prepare(settings) if study.prepare else None
    return _DATA[key]


def _better(study: Study, a: float, b: float) -> bool:
    if math.isnan(a):
        return False
    return math.isnan(b) or (a > b if study.higher_is_better else a < b)


@contextlib.contextmanager
def kept_rngs() -> Iterator[None]:
    """Python's, NumPy's and torch's global RNG states and ``PYTHONHASHSEED`` as they were before
    the block: the runs of this process (``workers=1``) and :func:`calibrate` seed them
    (:func:`~rnnkit.train.seed_everything`), and a caller of ``run_study`` drew from the last
    run's seed afterwards instead of its own."""
    state, hash_seed = get_rng_state(), os.environ.get("PYTHONHASHSEED")
    try:
        yield
    finally:
        set_rng_state(state)
        if hash_seed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = hash_seed


def eval_steps(steps: int, n_evals: int) -> set[int]:
    """The steps after which a run of ``steps`` steps validates: ``n_evals`` of them (every
    step when ``steps < n_evals``), every ``steps // n_evals`` steps with the last one moved
    to ``steps`` (the spacing of the recorded studies, whose best points it keeps)."""
    every = max(1, steps // n_evals)
    return {min(k * every, steps) for k in range(1, n_evals)} | {steps}


def fit(study: Study, spec: Spec, steps: int, time_cap: float | None = None) -> dict:
    """Train one run for ``steps`` Adam steps; validate ``min(n_evals, steps)`` times
    (:func:`eval_steps`, and at step 0; a run stopped early validates once more where it
    stopped, in place of the later ones); test the best-validation weights. Returns the
    record's result fields."""
    if study.run_fn is not None:
        return study.run_fn(spec, steps)
    s, hp = spec.settings, spec.hparams
    data = study_data(study, s)
    seed_everything(spec.trial)  # same init seed for every architecture of a trial
    model = study.build(spec, data)
    rng = np.random.default_rng([spec.trial, 1])  # same data order for every architecture
    opt = torch.optim.Adam(model.parameters(), lr=hp["lr"])
    evals = eval_steps(steps, s.get("n_evals", 10))
    curve, train_s, stopped = [], 0.0, None
    best_v = study.evaluate(model, data, "valid")
    best_state = copy.deepcopy(model.state_dict())
    curve.append([0.0, 0, best_v])
    step = 0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        loss = study.loss(model, data, spec, rng)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), s.get("clip", 1.0))
        opt.step()
        train_s += time.perf_counter() - t0
        if not math.isfinite(loss.item()):
            stopped = "diverged"
        elif time_cap is not None and train_s > time_cap:
            stopped = "time"
        if step in evals or stopped:
            v = study.evaluate(model, data, "valid") if stopped != "diverged" else float("nan")
            curve.append([round(train_s, 3), step, v])
            if _better(study, v, best_v):
                best_v, best_state = v, copy.deepcopy(model.state_dict())
        if stopped:
            break
    model.load_state_dict(best_state)
    test = study.evaluate(model, data, "test")
    n_params = sum(p.numel() for p in model.parameters())
    hidden = getattr(getattr(model, "rnn", None), "hidden_size", None)
    return {"hidden": hidden, "valid": best_v, "test": test, "metric": test, "steps": step,
            "train_seconds": round(train_s, 3), "params": n_params, "curve": curve,
            "stopped": stopped}  # fmt: skip


def calibrate(study: Study, settings: dict, archs: list[Arch], probe: int = 3) -> dict[str, list[float]]:
    """Seconds per training step, per validation and per test, per architecture, at the middle of
    the search space (``probe`` timed steps after one warm-up step)."""
    space = study.space(settings)
    mid = sample_hparams(space, 0)
    for name, (kind, *args) in space.items():
        if kind == "choice":
            mid[name] = args[0][len(args[0]) // 2]
    data = study_data(study, settings)
    costs = {}
    for arch in archs:
        spec = Spec(study.name, arch, 0, mid, settings)
        seed_everything(0)
        model = study.build(spec, data)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        rng = np.random.default_rng(0)
        times = []
        for _ in range(probe + 1):
            t0 = time.perf_counter()
            loss = study.loss(model, data, spec, rng)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        evals = []
        for split in ("valid", "test"):  # the test split may be larger (Arith: 2000 against 500)
            t0 = time.perf_counter()
            study.evaluate(model, data, split)
            evals.append(time.perf_counter() - t0)
        costs[arch.name] = [float(np.median(times[1:])), *evals]
    return costs


def steps_for_budget(costs: dict[str, list[float]], trials: int, budget_s: float, parallel: int,
                     n_evals: int, lo: int, hi: int) -> int:  # fmt: skip
    """The step count that makes ``trials`` runs of every architecture fit ``budget_s``
    seconds on ``parallel`` processes (10 % kept for overhead), clamped to ``[lo, hi]``.
    ``costs``: per architecture ``[step, validation, test]`` seconds (:func:`calibrate`; a
    ``study.json`` of before the test's cost has two, the test then counted as a validation).
    Each run evaluates ``n_evals + 2`` times (:func:`fit`: step 0, ``n_evals`` validations,
    the test; fewer when it has fewer steps than ``n_evals``)."""
    per_step = trials * sum(c[0] for c in costs.values())
    evals = trials * sum((n_evals + 1) * c[1] + c[-1] for c in costs.values())
    steps = int((0.9 * budget_s * parallel - evals) / max(per_step, 1e-9))
    return int(min(max(steps, lo), hi))


# -- records --------------------------------------------------------------------------------
def read_records(out: Path) -> list[dict]:
    """Every finished run of ``out`` (``runs.jsonl`` and the ranks' files), its non-finite values
    restored (files written before :func:`strict_record`, with bare ``NaN`` tokens, read alike);
    a line cut by a kill is ignored."""
    recs = []
    for path in sorted(out.glob("runs*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                recs.append(restore_record(json.loads(line)))
            except json.JSONDecodeError:
                continue
    return recs


def append_record(path: Path, rec: dict) -> None:
    """Append ``rec`` to ``path`` as one line of strict JSON (:func:`strict_record`), fsynced."""
    line = json.dumps(strict_record(rec), sort_keys=True, allow_nan=False) + "\n"
    with open(path, "a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":  # a line cut by a kill: start a line of our own after it
                line = "\n" + line
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def execute(study: Study, spec: Spec, steps: int, time_cap: float | None) -> dict:
    """One run: its record (identity, hyperparameters and results)."""
    t0 = time.time()
    res = fit(study, spec, steps, time_cap)
    # the config the model was built with: the architecture's own has its default width, not the
    # trial's searched (or chung's parameter-matched, or memory's hidden_size) one
    config = {**spec.arch.config, "hidden": res["hidden"]} if res.get("hidden") else spec.arch.config
    return {"study": spec.study, "arch": spec.arch.name, "config": config, "trial": spec.trial,
            "key": spec.key, "hparams": spec.hparams, "metric_name": study.metric,
            "wall_seconds": round(time.time() - t0, 3), **res}  # fmt: skip


def _progress(total: int, initial: int, enabled: bool | None):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is in the train extra
        return None
    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    return tqdm(total=total, initial=initial, unit="run", desc="grid", disable=disable, dynamic_ncols=True)


def run_grid(study: Study, specs: list[Spec], done: int, total: int, steps: int, out: Path,
             costs: dict[str, list[float]], *, workers: int = 1, threads: int = 1, rank: int = 0,
             world: int = 1, progress: bool | None = None) -> Iterator[dict]:  # fmt: skip
    """Run ``specs`` (the unfinished part of the grid), appending each record as it ends."""
    path = out / ("runs.jsonl" if world == 1 else f"runs.rank{rank}.jsonl")
    mine = specs[rank::world]
    bar = _progress(total, done, progress if rank == 0 else False)

    def cap(spec: Spec) -> float | None:
        c = costs.get(spec.arch.name)
        return 3 * steps * c[0] + 60 if c else None

    def finish(rec: dict) -> dict:
        append_record(path, rec)
        if bar is not None:
            bar.set_postfix_str(f"{rec['key']} {study.metric}={rec['metric']:.4g}")
            bar.update(1)
        return rec

    try:
        if workers <= 1:
            for spec in mine:
                yield finish(execute(study, spec, steps, cap(spec)))
        else:
            ctx = get_context("spawn")  # fork after torch threads started is unsafe
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(threads,)) as pool:  # fmt: skip
                futures = [pool.submit(execute, study, s, steps, cap(s)) for s in mine]
                failure = None
                for fut in as_completed(futures):
                    if fut.cancelled():
                        continue
                    try:
                        rec = fut.result()
                    except Exception as e:  # start no more runs; record those still running
                        if failure is None:
                            failure = e
                            for f in futures:
                                f.cancel()
                        continue
                    yield finish(rec)
                if failure is not None:
                    raise failure
    finally:
        if bar is not None:
            bar.close()


def save_json(path: Path, obj: dict) -> None:
    """``obj`` (``study.json``) as strict JSON (:func:`strict_record`: a non-finite value, e.g. a
    ``--set clip=1e999``, is ``null``, named in ``"nonfinite"``), atomically and synced as the CLI's
    run.json (:func:`~rnnkit.train.serialize.write_json_atomic`); :func:`read_json`."""
    from rnnkit.train.serialize import write_json_atomic

    write_json_atomic(strict_record(obj), path, indent=1, default=str, allow_nan=False)


def read_json(path: str | os.PathLike) -> dict:
    """What :func:`save_json` wrote, its non-finite values restored (files written before it,
    with bare ``NaN`` tokens, read alike); a damaged file is a ``ValueError`` naming it."""
    path = Path(path)  # a str too, as read_results and read_summary take (it failed in .read_text)
    try:
        return restore_record(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it or use another --out") from None


def spec_dict(spec: Spec) -> dict:
    return asdict(spec)
