"""``rnnkit study NAME``: reproduce the textbook's comparisons of recurrent architectures.

Studies: ``jozefowicz`` (Arith accuracy), ``greff`` (LSTM variants, Bach chorales NLL),
``chung`` (tanh/GRU/LSTM at matched size, NLL vs wall-clock), ``memory`` (memory horizon).
Each runs a budgeted grid (architectures × trials, one shared random hyperparameter search)
and writes ``runs.jsonl`` (every run), ``results.md`` (table beside the paper's numbers),
``boxplot.png`` (Greff's style) and, for ``chung``, ``curves.png``. A restarted study
resumes from ``runs.jsonl``. See ``docs/study.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rnnkit.arch import parse_opt, positive_int
from rnnkit.cli.common import positive_float
from rnnkit.train.outdir import not_a_directory

from .runner import (
    Arch,
    Spec,
    Study,
    calibrate,
    kept_rngs,
    read_json,
    read_records,
    run_grid,
    sample_hparams,
    save_json,
    steps_for_budget,
)
from .settings import SettingError, check_settings, comparable
from .studies import STUDIES, get_study

__all__ = ["Arch", "Spec", "Study", "STUDIES", "SettingError", "get_study", "run_study", "add_arguments",
           "run", "main"]  # fmt: skip


def _dist() -> tuple[int, int]:
    """(rank, world size) under torchrun (process group initialized), else (0, 1)."""
    from rnnkit.train.distributed import launched_world_size, setup_distributed

    if launched_world_size() <= 1:
        return 0, 1

    info = setup_distributed("gloo", device="cpu")
    return info.rank, info.world_size


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def run_study(name: str, out: str | os.PathLike, *, budget_minutes: float | None = None,
              seeds: int | None = None, steps: int | None = None, archs: Sequence[str] | None = None,
              settings: dict | None = None, workers: int = 1, threads: int = 1,
              progress: bool | None = None, report: bool = True) -> dict:  # fmt: skip
    """Run (or resume) study ``name`` in directory ``out``; returns ``{"steps", "records", ...}``.

    ``steps`` fixes the steps per run instead of deriving them from ``budget_minutes``;
    ``settings`` override the study's task settings (e.g. ``{"digits": 4}``); ``archs``
    picks a subset of its architectures (by name, spaces around it ignored). On a resume,
    ``archs`` runs and reports that subset; the stored grid keeps its other architectures (and
    gains new ones), so a resume without ``archs`` covers every architecture the study has had.
    Likewise ``seeds`` smaller than the stored count runs and reports the first ``seeds``
    trials and keeps the count; a larger one extends it.

    Each run seeds the global RNGs with its trial (weights, masks); the caller's Python, NumPy and
    torch RNG states and ``PYTHONHASHSEED`` are as they were when it returns, as with ``workers > 1``.
    """
    study = get_study(name)
    for flag, v in (("seeds", seeds), ("steps", steps), ("budget_minutes", budget_minutes)):
        if v is not None and not v > 0:  # 0 is an error, not the default
            raise ValueError(f"{flag} must be positive, got {v}")
    s = check_settings(name, study.settings, settings or {})
    if isinstance(archs, str):  # a str is a Sequence[str] too, of letters
        raise TypeError(f"archs must be a sequence of names, got the string {archs!r} (write [{archs!r}])")
    # stripped as the CLI's --archs "LSTM, GRU": " GRU" is not another architecture
    picked = [a.strip() for a in archs] if archs is not None else None
    names = picked or [a.name for a in study.archs]
    known = [a.name for a in study.archs]
    if picked == []:  # (an empty --archs "$UNSET" ran the whole grid: every architecture, the default budget)
        raise SettingError(f"archs names no architecture; choose from {known}")
    for n in names:
        if n not in known:  # a bad --archs value: a usage error, like a bad --set
            raise SettingError(f"study {name!r} has no architecture {n!r}; choose from {known}")
    out = Path(out)
    if why := not_a_directory(out):  # (mkdir's "[Errno 17] File exists" or "[Errno 20]" named no flag)
        raise SettingError(f"--out {out} {why}; use another --out")  # usage
    meta_path = out / "study.json"
    meta = read_json(meta_path) if meta_path.exists() else None
    if meta is None and read_records(out):
        # runs without the study.json that fixes their settings and step count: taking them as
        # finished (by key alone) would mix runs of another grid into this one's report
        raise ValueError(
            f"{out} holds finished runs (runs*.jsonl) but no study.json, which records the settings and "
            "steps per run they were made with; restore it to resume, or use another --out"
        )
    if meta is not None:  # resume: the grid is defined by what was stored
        if meta["study"] != name:
            raise ValueError(f"{out} holds study {meta['study']!r}, not {name!r}; use another --out")
        stored = json.loads(json.dumps(s, default=str))
        if settings and comparable(stored) != comparable(meta["settings"]):  # paths: the files named
            raise ValueError(
                f"{out} was run with settings {meta['settings']}, now {stored}; use another --out"
            )
        if steps is not None and steps != meta["steps"]:
            raise ValueError(
                f"{out} was run with {meta['steps']} steps per run, not {steps}; use another --out"
            )
        # the budget only sets the steps per run, stored and fixed for the grid: another one would
        # change nothing (and study.json would then misstate where the step count came from); one
        # whose steps were given (budget null) had none: a budget counts only beside those --steps,
        # ignored as in its first run
        was = meta.get("budget_minutes", budget_minutes)
        if budget_minutes is not None and was is None and steps is None:
            raise ValueError(
                f"{out} was run with --steps {meta['steps']} (no budget: the steps per run are fixed for "
                "its grid); resume without --budget-minutes or use another --out"
            )
        if budget_minutes is not None and was is not None and budget_minutes != was:
            raise ValueError(
                f"{out} was run with a {was:g}-minute budget ({meta['steps']} steps per run, fixed for "
                f"its grid), not {budget_minutes:g}; resume without --budget-minutes or use another --out"
            )
        s, steps = meta["settings"], meta["steps"]
        names = picked or meta["archs"]
    # the grid's architectures: a resume with --archs runs (and reports) that subset, adds
    # the new ones to the grid and keeps the rest, so a plain resume still covers them all
    grid = names if meta is None else [a.name for a in study.archs if a.name in {*meta["archs"], *names}]
    arch_list = [a for a in study.archs if a.name in names]
    K = seeds or (meta["seeds"] if meta else study.default_seeds)
    # likewise the trials: fewer --seeds on a resume run (and report) the first K, the stored
    # count stays; more extend it
    grid_K = K if meta is None else max(K, meta["seeds"])
    # what the steps per run come from: null where they were given (--steps overrides the budget)
    if meta is not None:
        budget = meta.get("budget_minutes", budget_minutes)
    else:
        budget = None if steps is not None else budget_minutes or study.default_budget_minutes
    import torch.distributed as tdist

    # (a process group the caller set up is the caller's: torn down here only if made here)
    ours = not (tdist.is_available() and tdist.is_initialized())
    rank, world = _dist()
    # on a resume, the processes the steps were computed for (the study.json record; this one's
    # --workers only sets how many run now)
    parallel = meta.get("parallel", max(workers, world)) if meta else max(workers, world)
    costs = dict(meta.get("costs", {})) if meta else {}
    if study.validate is not None:  # before study.json: with --steps, no calibration would catch it
        study.validate(s, arch_list)
    if steps is None and rank == 0:
        if study.run_fn is not None:  # own loop: scale its default step count with the budget
            steps = max(1, round(s["steps"] * budget / study.default_budget_minutes))
        else:
            with kept_rngs():  # (the caller's: calibrate seeds them)
                costs = calibrate(study, s, arch_list)
            steps = steps_for_budget(costs, K, budget * 60, parallel, s.get("n_evals", 10),
                                     s.get("min_steps", 1), s.get("max_steps", 10**9))  # fmt: skip
    # made only now: a study refused before (bad --set params, a failed calibration) leaves no
    # empty --out behind
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_json(meta_path, {"study": name, "settings": s, "steps": steps, "seeds": grid_K, "archs": grid,
                              "budget_minutes": budget, "parallel": parallel, "costs": costs})  # fmt: skip
    # the finished runs, read by every rank before any trains (the barrier): read after it, a rank
    # that finished a run first changed the list a slower rank split (runs repeated or skipped)
    done = {r["key"] for r in read_records(out)}
    _barrier(world)
    if rank != 0:
        meta = read_json(meta_path)
        steps, s, costs = meta["steps"], meta["settings"], meta["costs"]
    space = study.space(s)
    specs = [Spec(name, a, k, sample_hparams(space, k), s) for k in range(K) for a in arch_list]
    todo = [sp for sp in specs if sp.key not in done]
    done_n = len(specs) - len(todo)
    opts = {"workers": workers, "threads": threads, "rank": rank, "world": world, "progress": progress}
    with kept_rngs():  # (the caller's: a run in this process seeds them)
        for _ in run_grid(study, todo, done_n, len(specs), steps, out, costs, **opts):
            pass
    _barrier(world)
    records = [r for r in read_records(out) if r["key"] in {sp.key for sp in specs}]
    written = {}
    if report and rank == 0:
        from .report import write_report

        written = write_report(study, records, out, steps=steps, trials=K)
    if world > 1 and ours:
        from rnnkit.train import cleanup_distributed

        cleanup_distributed()
    return {"out": out, "steps": steps, "records": records, "skipped": len(specs) - len(todo), "rank": rank,
            **written}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rnnkit study`` (shared by the ``rnnkit`` command and ``python -m``)."""
    p.add_argument("name", choices=sorted(STUDIES), help="which study")
    p.add_argument("--budget-minutes", type=positive_float, default=None,
                   help="wall-clock for the whole grid (default: the study's, 30)")  # fmt: skip
    p.add_argument(
        "--seeds", type=positive_int, default=None, help="trials per architecture (default: the study's)"
    )
    p.add_argument(
        "--out", default=None, help="output directory (default runs/study-NAME); resumed if it exists"
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="fixed training steps per run (overrides the budget)"
    )
    # each study's names: a bad --archs pointed to this help, which named none of them
    names = "; ".join(f"{n}: {', '.join(a.name for a in st.archs)}" for n, st in sorted(STUDIES.items()))
    p.add_argument(
        "--archs",
        default=None,
        help=f"comma-separated subset of the study's architectures (default all): {names}",
    )
    p.add_argument("--set", action="append", type=parse_opt, default=[], metavar="KEY=VALUE",
                   help="override a task setting, e.g. --set digits=4 --set lr=[1e-3,3e-3]")  # fmt: skip
    p.add_argument("--workers", type=positive_int, default=1, help="processes running runs in parallel")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per worker process")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from rnnkit.cli import CLIError

    out = args.out or f"runs/study-{args.name}"
    old = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        res = run_study(
            args.name, out, budget_minutes=args.budget_minutes, seeds=args.seeds, steps=args.steps,
            archs=[a.strip() for a in args.archs.split(",")] if args.archs is not None else None,
            settings=dict(args.set),
            workers=args.workers, threads=args.threads, progress=False if args.no_progress else None,
        )  # fmt: skip
    except SettingError as e:  # a bad --set or --archs: a usage error
        raise CLIError(f"study: {e} (see rnnkit study --help)", code=2) from None
    finally:  # the caller's count back (a notebook calling main() was left at --threads, default 1)
        torch.set_num_threads(old)
    if res["rank"] == 0:  # under torchrun: one summary, from rank 0
        print(f"{len(res['records'])} runs ({res['skipped']} resumed), {res['steps']} steps each -> {out}")
        if "table" in res:
            print(res["table"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rnnkit.study ARGS``: exactly ``rnnkit study ARGS`` (the same parser, and a
    user error -- a bad flag, an unknown architecture, a mismatched resume -- is one line on
    stderr with exit status 2 or 1; ``RNNKIT_DEBUG=1`` shows the traceback)."""
    from rnnkit.cli import _run

    return _run(["study", *(sys.argv[1:] if argv is None else argv)])
