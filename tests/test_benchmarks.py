"""Smoke runs of the benchmark scripts at tiny sizes: they must run end to end (tables, plot).

The numbers are not checked here (benchmarks/RESULTS.md holds them); a script that crashes on
a documented invocation is."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses and pickling look the module up
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _as_scripts(monkeypatch):
    import torch

    monkeypatch.syspath_prepend(str(ROOT))  # run as scripts, they import their siblings (_rss)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the scripts time float32, as documented
    yield
    torch.set_default_dtype(old)


def test_scan_benchmark_plots_a_single_layer(tmp_path, capsys):
    # one layer gave plt.subplots a bare Axes, not a row of them: TypeError after the whole run
    plot = tmp_path / "scan.png"
    args = "--ts 8,16 --repeat 1 --layers mingru --loop-max-t 0 --slow-max-t 0 --threads 1".split()
    _script("scan").main([*args, "--plot", str(plot)])
    assert plot.stat().st_size > 0
    assert "| 16 | mingru |" in capsys.readouterr().out


def test_layers_benchmark_prints_its_table(capsys):
    _script("layers").main("--shapes small --cases lstm --repeat 1 --no-loop --threads 1".split())
    out = capsys.readouterr().out
    assert "| lstm | small |" in out


@pytest.mark.parametrize("n", range(1, 7))
def test_layers_round_order_is_balanced(n):
    # A rotation kept the cyclic order: one contestant followed the fused path in n - 1 of n rounds.
    names = [f"c{i}" for i in range(n)]
    period = n if n % 2 == 0 else 2 * n
    rows = [_script("layers").round_order(names, r) for r in range(period)]
    assert all(sorted(row) == names for row in rows)
    positions = Counter((i, name) for row in rows for i, name in enumerate(row))
    assert set(positions.values()) == {period // n} and len(positions) == n * n
    follows = Counter(pair for row in rows for pair in zip(row, row[1:]))
    assert len(follows) == n * (n - 1) and set(follows.values()) <= {period // n}


def test_layers_benchmark_times_rounds_in_balanced_order(monkeypatch):
    layers = _script("layers")
    calls = []

    def timer(fn, m, inner=1):
        calls.append((fn.__name__, id(m)))
        return 1e-3

    monkeypatch.setattr(layers, "_timer", timer)
    layers.bench_case("lstm", {}, (2, 1, 2, 2), repeat=4)  # rnnkit, torch, loop, fused
    trains = [m for fn, m in calls[1:] if fn == "train"]  # calls[0]: sizing the batches of calls
    rounds = [trains[i : i + 4] for i in range(0, 16, 4)]
    follows = Counter(pair for row in rounds for pair in zip(row, row[1:]))
    assert len(follows) == 12 and set(follows.values()) == {1}


def test_main_job_curve_prints_the_steps_column(tmp_path, capsys):
    # RESULTS.md's curve tables show the steps of each budget; the script's table had no such column
    run = tmp_path / "3min"
    run.mkdir()
    rows = [
        {"split": "train", "step": 500, "elapsed_s": 60.0, "loss": 1.6},
        {"split": "val", "step": 500, "loss": 1.5},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {"stop_reason": "max_minutes", "step": 1738, "epoch": 0, "valid_nats_per_char": 1.427}
    (run / "results.json").write_text(json.dumps(results))
    _script("main_job_curve").main(["--minutes", "3", "--out", str(tmp_path)])  # a finished run: not rerun
    out = capsys.readouterr().out
    assert "| budget (min) | final valid nats/char | bits/char | steps | validation points" in out
    assert "| 3 | 1.427 | 2.059 | 1,738 | 1.0: 1.500 |" in out


def test_peak_rss_is_the_median_of_fresh_processes(monkeypatch):
    # One fresh process read torch's GRU step at 39.5 or 44.2 MiB by chance (2 threads): one draw
    # made the fused/torch column 0.90 or 1.01.
    rss = _script("_rss")
    readings = iter(["39.5\n", "44.2\n", "40.0\n"])
    monkeypatch.setattr(rss.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout=next(readings)))
    assert rss.peak_rss_mib("pass", "pass", repeat=3) == 40.0


def test_peak_rss_measures_a_step():
    mib = _script("_rss").peak_rss_mib("pass", "x=bytearray(64*2**20)")
    assert 60 < mib < 70


def test_ab_benchmark_alternates_two_trees(capsys):
    # two processes per round, the trees' order alternating; both trees here are this checkout
    tree = str(ROOT.parent)
    args = "--case lstm --shape small --rounds 2 --calls 1 --threads 1".split()
    _script("ab").main([tree, tree, *args])
    out = capsys.readouterr().out
    order = [line.split("|")[2].strip() for line in out.splitlines() if line.startswith(("| 0 |", "| 1 |"))]
    assert order == ["A", "B", "B", "A"]
    assert "| median | B |" in out


@pytest.mark.parametrize(
    "trees,why",
    [([], "expected two trees"), (["."], "expected two trees"), ([".", "/"], "not an rnnkit source tree")],
)
def test_ab_benchmark_rejects_anything_but_two_trees(trees, why, capsys):
    with pytest.raises(SystemExit):
        _script("ab").main([*(str(ROOT.parent) if t == "." else t for t in trees), "--rounds", "1"])
    assert why in capsys.readouterr().err


def test_packed_benchmark_times_the_layer_alone_on_the_same_work(monkeypatch, capsys):
    """The "layer alone" column runs the layer on input packed once outside the step: it must
    compute the packed step's parameter gradients, less the packing, and the table must print
    it for every family and contestant."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    s = _script("packed_memory")
    monkeypatch.setattr(s, "B", 4)
    monkeypatch.setattr(s, "I", 3)
    monkeypatch.setattr(s, "H", 5)
    lengths = torch.tensor([3, 5, 2, 4])
    x = torch.randn(5, 4, 3)
    grads = []
    for run in (s.step_fn, s.layer_fn):
        torch.manual_seed(0)
        m = s.make("lstm", "fused")
        monkeypatch.setattr(m, "zero_grad", lambda set_to_none=True: None)  # keep the gradients
        if run is s.step_fn:
            run(m, x, lengths)()
        else:
            run(m, pack_padded_sequence(x, lengths, enforce_sorted=False))()
        grads.append([p.grad.clone() for p in m.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    s.packed_vs_padded(1)
    table = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("|")]
    assert "layer alone packed/padded" in table[0] and "lengths=/padded" in table[0]
    assert len(table) == 2 + 2 * len(s.FAMILIES)  # header, rule, torch and fused per family
    assert all(len(ln.split("|")) == 11 for ln in table)
    assert all(ln.split("|")[5].strip() == "-" for ln in table[2::2])  # torch.nn has no lengths=
