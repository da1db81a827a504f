"""Studies run in parallel end to end: the process pool of ``--workers`` and the ranks under torchrun."""

import json

import pytest

import rnnkit.study.runner as runner
from rnnkit.study import run_study
from rnnkit.study.studies import get_study

from .test_e2e import TINY_ARITH


def test_process_pool(tmp_path, monkeypatch):
    """The pool path, with threads standing in for processes (spawning two interpreters that
    import torch takes ~20 s here); what crosses the process boundary must pickle."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    sent = []

    class Pool(ThreadPoolExecutor):
        def __init__(self, workers, mp_context, initializer, initargs):
            assert mp_context.get_start_method() == "spawn" and initargs == (1,)
            super().__init__(workers)

        def submit(self, fn, *args):
            sent.append(pickle.loads(pickle.dumps(args)))
            return super().submit(fn, *args)

    monkeypatch.setattr(runner, "ProcessPoolExecutor", Pool)
    out = tmp_path / "pool"
    res = run_study("jozefowicz", out, steps=2, seeds=2, archs=["LSTM"], settings=TINY_ARITH, workers=2,
                    progress=False)  # fmt: skip
    assert sorted(r["key"] for r in res["records"]) == ["LSTM#0", "LSTM#1"]
    assert len(sent) == 2 and sent[0][0].name == "jozefowicz"
    assert len((out / "runs.jsonl").read_text().splitlines()) == 2  # the parent wrote them


def test_process_pool_records_finished_runs_before_raising(tmp_path, monkeypatch):
    """A failing run used to raise at once: the runs other workers finished afterwards were
    never recorded (and were redone on resume)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    class Pool(ThreadPoolExecutor):
        def __init__(self, workers, mp_context, initializer, initargs):
            super().__init__(workers)

    finished, lock = [], threading.Lock()

    def execute(study, spec, steps, cap):
        if spec.trial == 0:
            raise RuntimeError("run 0 broke")
        time.sleep(0.3)  # still running when run 0 fails
        with lock:
            finished.append(spec.key)
        return {"key": spec.key, "metric": 0.5}

    monkeypatch.setattr(runner, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(runner, "execute", execute)
    study = get_study("jozefowicz")
    specs = [runner.Spec(study.name, study.archs[1], k, {"lr": 1e-3}, {}) for k in range(4)]
    with pytest.raises(RuntimeError, match="run 0 broke"):
        list(runner.run_grid(study, specs, 0, 4, 2, tmp_path, {}, workers=2, progress=False))
    recorded = [r["key"] for r in runner.read_records(tmp_path)]
    assert "LSTM#1" in finished and sorted(recorded) == sorted(finished)
    assert len(finished) < 3  # no run started after the failure was seen (at most one raced it)


def test_a_rank_splits_the_runs_left_before_any_rank_trains(tmp_path, monkeypatch):
    """Under torchrun every rank read the finished runs after the barrier that starts training: a
    rank that finished a run first shortened the list a slower rank then split by rank, so the
    slower rank skipped (or repeated) runs. Rank 1 of 2 here: "rank 0" finishes Tanh#1 during the
    barrier; rank 1's share of the runs left (Tanh#1, LSTM#1) is still LSTM#1."""
    import rnnkit.study as study_mod
    import rnnkit.train

    out = tmp_path / "j"
    archs = ["Tanh", "LSTM"]
    run_study("jozefowicz", out, steps=3, seeds=1, archs=archs, settings=TINY_ARITH, progress=False)
    first = runner.read_records(out)[0]

    def barrier(world):  # rank 0 finishes Tanh#1 meanwhile
        with open(out / "runs.rank0.jsonl", "w", encoding="utf-8") as f:
            f.write(json.dumps({**first, "key": "Tanh#1", "trial": 1}) + "\n")

    monkeypatch.setattr(study_mod, "_dist", lambda: (1, 2))
    monkeypatch.setattr(study_mod, "_barrier", barrier)
    monkeypatch.setattr(rnnkit.train, "cleanup_distributed", lambda: None)
    calls = []
    real = runner.fit
    monkeypatch.setattr(runner, "fit", lambda st, spec, *a: calls.append(spec.key) or real(st, spec, *a))
    run_study("jozefowicz", out, seeds=2, progress=False, report=False)
    assert calls == ["LSTM#1"]


def test_a_callers_process_group_is_left_to_the_caller(tmp_path, monkeypatch):
    """run_study under torchrun tore the process group down at its end, also one the calling
    script had set up itself (whose later collectives then failed); it tears down only its own."""
    import torch.distributed as tdist

    import rnnkit.study as study_mod
    import rnnkit.train

    torn = []
    monkeypatch.setattr(study_mod, "_dist", lambda: (0, 2))
    monkeypatch.setattr(study_mod, "_barrier", lambda world: None)
    monkeypatch.setattr(rnnkit.train, "cleanup_distributed", lambda: torn.append(1))
    kw = {"steps": 2, "seeds": 1, "archs": ["Tanh"], "settings": TINY_ARITH, "progress": False}
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)  # the caller's group
    run_study("jozefowicz", tmp_path / "j", **kw)
    assert torn == []
    monkeypatch.setattr(tdist, "is_initialized", lambda: False)  # made by run_study (_dist)
    run_study("jozefowicz", tmp_path / "k", **kw)
    assert torn == [1]
