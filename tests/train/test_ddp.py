"""DDP: 2 gloo processes on 127.0.0.1 == 1 process with the same global batch."""

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rnnkit.cli.rundir import read_results
from rnnkit.train import latest_checkpoint, list_checkpoints, load_checkpoint, read_metrics

from . import ddp_worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc's parent links; none where /proc is absent)."""
    parent = {}
    for d in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, todo = [], [pid]
    while todo:
        here = todo.pop()
        kids = [c for c, pp in parent.items() if pp == here]
        found += kids
        todo += kids
    return found


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    # torchrun leaves a torchelastic_* log directory in TMPDIR per run: one of ours, removed after
    tmp = tempfile.mkdtemp(prefix="rnnkit-torchrun-")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": tmp}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          start_new_session=True) as p:  # fmt: skip
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            # a hung job is killed with its workers, not left spinning: torchrun starts each
            # worker in a session of its own, out of reach of a kill of torchrun's group
            for pid in [p.pid, *_descendants(p.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            out, err = p.communicate()
            raise AssertionError(f"torchrun timed out:\n{out[-3000:]}{err[-3000:]}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_ddp_two_processes_equal_single_process(tmp_path):
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    _torchrun(ddp_worker.__file__, str(ddp_dir))

    single_dir.mkdir()
    ddp_worker.run(str(single_dir))  # no torchrun variables: one process, whole batch

    ddp, single = (json.loads((d / "result.json").read_text()) for d in (ddp_dir, single_dir))
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert len(ddp["losses"]) == len(single["losses"]) == 20
    torch.testing.assert_close(
        torch.tensor(ddp["losses"]), torch.tensor(single["losses"]), rtol=0, atol=1e-10
    )
    torch.testing.assert_close(torch.tensor(ddp["val"]), torch.tensor(single["val"]), rtol=0, atol=1e-10)
    p_ddp, p_one = (load_file(str(d / "params.safetensors")) for d in (ddp_dir, single_dir))
    for k in p_one:
        torch.testing.assert_close(p_ddp[k], p_one[k], rtol=0, atol=1e-10)
    # rank 0 alone wrote the checkpoint, with both ranks' RNG and recurrent states
    ckpt = latest_checkpoint(ddp_dir / "run" / "checkpoints")
    assert len(list_checkpoints(ddp_dir / "run" / "checkpoints")) == 1
    ranks = load_checkpoint(ckpt)["state"]["ranks"]
    assert len(ranks) == 2
    h0, h1 = ranks[0]["hidden"][0], ranks[1]["hidden"][0]  # LSTM (h, c), per rank's streams
    assert h0.shape == h1.shape == (1, 2, 8) and not torch.equal(h0, h1)
    assert (ddp_dir / "run" / "metrics.jsonl").is_file()


def test_ddp_padded_batches_weigh_every_token_alike(tmp_path):
    """Ranks with fewer tokens: the update is that of the token-weighted mean loss over the
    global batch (each rank's mean loss weighs its share of the tokens), as in one process."""
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    _torchrun(ddp_worker.__file__, str(ddp_dir), "padded")
    single_dir.mkdir()
    ddp_worker.run(str(single_dir), "padded")
    ddp, single = (json.loads((d / "result.json").read_text()) for d in (ddp_dir, single_dir))
    assert ddp["world_size"] == 2 and len(ddp["losses"]) == len(single["losses"]) == 6
    losses = (torch.tensor(ddp["losses"]), torch.tensor(single["losses"]))
    torch.testing.assert_close(*losses, rtol=0, atol=1e-10)
    p_ddp, p_one = (load_file(str(d / "params.safetensors")) for d in (ddp_dir, single_dir))
    for k in p_one:
        torch.testing.assert_close(p_ddp[k], p_one[k], rtol=0, atol=1e-10)


def test_ddp_time_budget_stops_every_rank_at_the_same_step(tmp_path):
    """``max_minutes`` under DDP: the ranks' clocks differ, yet all stop at the same step (a
    rank that stopped alone would leave the others waiting in the next collective)."""
    _torchrun(ddp_worker.__file__, str(tmp_path), "budget")
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1 and r0["why"] == "max_minutes" and r0["step"] > 10


def test_ddp_tbptt_refuses_batches_that_split_into_unequal_update_counts(tmp_path):
    """Each TBPTT update is a DDP gradient all-reduce: ranks whose padded batches split into
    different numbers of updates would wait in mismatched collectives. Both ranks refuse."""
    _torchrun(ddp_worker.__file__, str(tmp_path), "tbptt")
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    assert r0["step"] == r1["step"] == 1  # the first step (8 steps on each rank) trained
    assert "the ranks' batches of step 2 split into 1 to 3 TBPTT updates" in r0["error"]
    assert "(this rank: time length 12, 3)" in r0["error"] and "(this rank: time length 3, 1)" in r1["error"]


def test_ddp_out_dir_in_use_is_refused_on_every_rank(tmp_path):
    """Rank 0 alone takes out_dir's lock; when another process holds it every rank raises."""
    fcntl = pytest.importorskip("fcntl")
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".lock", "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _torchrun(ddp_worker.__file__, str(tmp_path), "locked")
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    assert r0["step"] == r1["step"] == 0 and "in use" in r0["error"] and "in use" in r1["error"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ddp_ranks_with_unequal_batch_counts_refuse_alike(tmp_path):
    """A rank whose data runs out before the others' (here at step 3 of 3): every rank raises at
    that step. Before, the short rank went on with its next epoch, its batches paired with the
    others' (a silently different run) until it finished and left the others waiting (a hang)."""
    _torchrun(ddp_worker.__file__, str(tmp_path), "uneven")
    r0, r1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    assert r0["step"] == r1["step"] == 2
    for r, has in ((r0, "has a batch"), (r1, "has none")):
        assert "the ranks' training data yielded unequal numbers of batches in epoch 0" in r["error"]
        assert f"1 of 2 ranks had a batch for step 3 (this rank {has})" in r["error"]


def _ranks(out_dir):
    res = [json.loads((out_dir / f"result{r}.json").read_text()) for r in (0, 1)]
    params = [load_file(str(out_dir / f"params{r}.safetensors")) for r in (0, 1)]
    return res, params


def _ddp_and_one_process(tmp_path, mode):
    """``mode`` of ddp_worker under torchrun (2 ranks) and in one process with the whole batch:
    the ranks' results and parameters, then the one process's."""
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp_dir.mkdir()
    single_dir.mkdir()
    _torchrun(ddp_worker.__file__, str(ddp_dir), mode)
    ddp_worker.run(str(single_dir), mode)
    ranks, params = _ranks(ddp_dir)
    one = json.loads((single_dir / "result0.json").read_text())
    return ranks, params, one, load_file(str(single_dir / "params0.safetensors"))


def test_ddp_callback_stop_on_rank_0_stops_every_rank(tmp_path):
    """Callbacks run on rank 0 alone; its stop must stop rank 1 at the same step (else rank 1
    waits for rank 0 in the next gradient all-reduce: torchrun times out)."""
    _torchrun(ddp_worker.__file__, str(tmp_path), "callback_stop")
    res = [json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1)]
    assert res == [{"step": 3, "why": "callback"}] * 2


def test_ddp_batch_without_targets_on_one_rank_equals_one_process(tmp_path):
    """No TBPTT: step 2 has no target on rank 1, step 3 none on any rank (a masked-mean loss, NaN
    over no target with NaN gradients). Rank 1's share of step 2 is a zero gradient (the loss
    was NaN * 0: NaN), step 3 makes no update (Adam stepped on its zero gradients), and the run
    equals one process with the whole batch; step 3 has no loss (NaN, not 0.0)."""
    (r0, r1), (p0, p1), one, p_one = _ddp_and_one_process(tmp_path, "empty")
    assert r0["adam_steps"] == r1["adam_steps"] == one["adam_steps"] == 2
    assert len(r0["losses"]) == len(one["losses"]) == 3
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(r1["losses"]), equal_nan=True)
    assert math.isnan(r0["losses"][2]) and math.isnan(one["losses"][2])
    torch.testing.assert_close(
        torch.tensor(r0["losses"][:2]), torch.tensor(one["losses"][:2]), rtol=0, atol=1e-10
    )
    assert r0["tokens"] == one["tokens"] == 5 * 4 + 5 * 2
    for k in p_one:
        assert torch.isfinite(p0[k]).all()
        torch.testing.assert_close(p0[k], p1[k], rtol=0, atol=0)
        torch.testing.assert_close(p0[k], p_one[k], rtol=0, atol=1e-10)


def test_ddp_tbptt_window_without_targets_on_one_rank(tmp_path):
    """tbptt_k1: a window with no target on one rank only was skipped there alone, so the other
    rank's gradient all-reduce met no partner (gloo aborted, or the job hung). All ranks now skip
    exactly the windows without a target on any rank; a rank without one joins the others'
    update with a zero gradient (not the NaN of its masked-mean loss): 4 updates, on both."""
    _torchrun(ddp_worker.__file__, str(tmp_path), "tbptt_empty")
    (r0, r1), (p0, p1) = _ranks(tmp_path)
    assert r0["adam_steps"] == r1["adam_steps"] == 4
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 3
    assert all(math.isfinite(v) for v in r0["losses"])
    assert r0["tokens"] == 4 * 2 + 8 * 4 + 4 * 2
    for k in p0:
        assert torch.isfinite(p0[k]).all()
        torch.testing.assert_close(p0[k], p1[k], rtol=0, atol=0)


def test_ddp_tbptt_windows_weigh_every_token_alike(tmp_path):
    """tbptt_k1 with ranks holding unequal target counts in each window (the last, short one too):
    each rank's window mean weighs its share of the window's targets over all ranks, so every update
    (clipped: the all-reduced gradient, on every rank alike) is that of one process on the global
    batch. Before, DDP averaged the ranks' window means, each counting alike."""
    (r0, r1), (p0, p1), one, p_one = _ddp_and_one_process(tmp_path, "tbptt_weighted")
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 3
    assert r0["tokens"] == one["tokens"]
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(one["losses"]), rtol=0, atol=1e-10)
    for k in p_one:
        torch.testing.assert_close(p0[k], p1[k], rtol=0, atol=0)
        torch.testing.assert_close(p0[k], p_one[k], rtol=0, atol=1e-10)


def test_ddp_step_fn_equals_one_process(tmp_path):
    """A custom ``step_fn`` under DDP: ranks with unequal target counts weigh their mean losses by
    their shares, a rank without a target joins the update with a zero gradient (not its NaN loss),
    a step without any target makes no update; clipped, the run equals one process."""
    (r0, r1), (p0, p1), one, p_one = _ddp_and_one_process(tmp_path, "step_fn")
    assert r0["adam_steps"] == r1["adam_steps"] == one["adam_steps"] == 2
    assert r0["tokens"] == one["tokens"] == 5 * 2 + 2 * 2 + 5 * 2
    assert math.isnan(r0["losses"][2]) and math.isnan(one["losses"][2])
    torch.testing.assert_close(
        torch.tensor(r0["losses"][:2]), torch.tensor(one["losses"][:2]), rtol=0, atol=1e-10
    )
    for k in p_one:
        torch.testing.assert_close(p0[k], p1[k], rtol=0, atol=0)
        torch.testing.assert_close(p0[k], p_one[k], rtol=0, atol=1e-10)


def test_ddp_step_fn_may_call_methods_of_the_model(tmp_path):
    """A ``step_fn`` gets the model itself under DDP too, and runs inside DDP's forward (whose
    gradient all-reduce needs it): ``model.loss(...)`` works and the run equals one process.
    Before, it got the DDP wrapper, which has no ``loss`` (AttributeError on every rank)."""
    (r0, r1), (p0, p1), one, p_one = _ddp_and_one_process(tmp_path, "step_fn_method")
    assert len(r0["losses"]) == 3
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(one["losses"]), rtol=0, atol=1e-10)
    for k in p_one:
        torch.testing.assert_close(p0[k], p1[k], rtol=0, atol=0)
        torch.testing.assert_close(p0[k], p_one[k], rtol=0, atol=1e-10)


def _losses(run_dir):
    rows = read_metrics(run_dir / "metrics.jsonl")  # strict JSON: a NaN loss is null + "nonfinite"
    return [(r["split"], r["step"], r["loss"]) for r in rows]


def test_cli_charlm_under_torchrun_equals_one_process(tmp_path):
    """``torchrun -m rnnkit train charlm``: 2 ranks share the 4 streams of the global batch and
    log/validate/finish as one process with the whole batch (float32: to rounding)."""
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question; whether tis nobler in the mind. " * 60)
    flags = ["--data", str(text), "--max-steps", "8", "--hidden", "16", "--batch-size", "4",
             "--seq-len", "16", "--dropout", "0", "--val-every", "4", "--log-every", "1",
             "--no-progress", "--seed", "0"]  # fmt: skip
    proc = _torchrun("-m", "rnnkit", "train", "charlm", *flags, "--out", str(tmp_path / "ddp"))
    assert proc.stdout.count("stopped (max_steps) after 8 steps") == 1  # rank 0 alone prints
    cmd = [sys.executable, "-m", "rnnkit", "train", "charlm", *flags, "--out", str(tmp_path / "one")]
    # a process of its own, as the ranks: one thread, float32 (this test process runs float64)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=120).returncode == 0
    ddp, one = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert [r[:2] for r in ddp] == [r[:2] for r in one] and len(ddp) > 8
    torch.testing.assert_close(
        torch.tensor([r[2] for r in ddp]), torch.tensor([r[2] for r in one]), atol=1e-4, rtol=0
    )  # float32 GEMMs over 2 rows a rank against 4 in one process round differently (~2e-5)
    res = [read_results(tmp_path / d) for d in ("ddp", "one")]
    assert res[0]["valid_nats_per_char"] == pytest.approx(res[1]["valid_nats_per_char"], abs=1e-4)
    # a time budget (the learning-rate schedule follows it): every rank stops at the same step
    flags[flags.index("--max-steps") : flags.index("--max-steps") + 2] = ["--max-minutes", "0.03"]
    _torchrun("-m", "rnnkit", "train", "charlm", *flags, "--out", str(tmp_path / "budget"))
    assert read_results(tmp_path / "budget")["stop_reason"] == "max_minutes"


def test_cli_resume_under_torchrun_continues_exactly(tmp_path):
    """A data-parallel command-line run stopped at step 3 and resumed to 6 logs what an
    uninterrupted 6-step run logs (every rank's sampler position, RNG and state restored).
    The memory task: a constant learning rate (charlm's schedule spans the budget given)."""
    flags = ["train", "memory", "--task", "adding", "--length", "6", "--n-train", "64", "--n-valid", "16",
             "--batch-size", "8", "--hidden", "8", "--log-every", "1", "--no-progress"]  # fmt: skip
    _torchrun("-m", "rnnkit", *flags, "--max-steps", "6", "--out", str(tmp_path / "whole"))
    _torchrun("-m", "rnnkit", *flags, "--max-steps", "3", "--out", str(tmp_path / "split"))
    _torchrun("-m", "rnnkit", *flags, "--max-steps", "6", "--resume", "--out", str(tmp_path / "split"))
    whole, split = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
    train = [r for r in whole if r[0] == "train"]
    assert train == [r for r in split if r[0] == "train"] and len(train) == 6


def test_cli_other_tasks_under_torchrun(tmp_path):
    """Every ``rnnkit train`` task runs under torchrun: each rank its share of the global batch
    (a DistributedSampler, or the length buckets of padded text), rank 0 alone writing."""
    csv = tmp_path / "t.csv"
    csv.write_text(
        "text,label\n" + "".join(f'"good film {k}",pos\n"a bad, bad one {k}",neg\n' for k in range(30))
    )
    series = tmp_path / "s.csv"
    series.write_text("t,value\n" + "".join(f"{t},{math.sin(t / 4):.5f}\n" for t in range(120)))
    forecast_flags = ["--window", "8", "--horizon", "4", "--arima-order", "none"]
    runs = {
        "memory": ["memory", "--task", "adding", "--length", "10", "--n-train", "64", "--n-valid", "16"],
        "classify": ["classify", "--data", str(csv)],
        # its step_fn calls the model's loss method (before: AttributeError, the DDP wrapper has none)
        "forecast": ["forecast", "--data", str(series), "--column", "value", *forecast_flags],
    }
    for name, argv in runs.items():
        out = tmp_path / name
        proc = _torchrun("-m", "rnnkit", "train", *argv, "--max-steps", "4", "--batch-size", "8",
                         "--hidden", "8", "--no-progress", "--out", str(out))  # fmt: skip
        assert proc.stdout.count("stopped (max_steps) after 4 steps") == 1, proc.stdout
        assert read_results(out)["step"] == 4
    bad = [
        "-m",
        "rnnkit",
        "train",
        "memory",
        "--batch-size",
        "7",
        "--max-steps",
        "1",
        "--out",
        str(tmp_path / "x"),
    ]
    with pytest.raises(AssertionError, match="must be a multiple of 2 ranks"):
        _torchrun(*bad)


def test_study_under_torchrun_splits_the_grid_and_exits_cleanly(tmp_path):
    """``torchrun -m rnnkit.study``: the ranks share the grid, rank 0 writes the report, and
    every rank leaves with status 0 (``finish_process``: no finalization for gloo to abort)."""
    out = tmp_path / "s"
    sets = ["--set", "digits=2", "--set", "hidden=[8]", "--set", "embed=4", "--set", "batch=8"]
    sets += ["--set", "n_valid=20", "--set", "n_test=20", "--set", "n_evals=2"]
    study = ["jozefowicz", "--steps", "2", "--seeds", "1", "--archs", "Tanh,LSTM", "--out", str(out)]
    proc = _torchrun("-m", "rnnkit.study", *study, "--no-progress", *sets)
    ranks = [[json.loads(line)["key"] for line in (out / f"runs.rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]  # fmt: skip
    assert sorted(ranks[0] + ranks[1]) == ["LSTM#0", "Tanh#0"] and ranks[0] and ranks[1]
    table = (out / "results.md").read_text()
    assert "| Tanh | 1 |" in table and "| LSTM | 1 |" in table
    assert proc.stdout.count(" runs (0 resumed)") == 1  # the summary from rank 0 only


def test_finish_process_leaves_with_the_code_after_flushing(tmp_path):
    """In a process that joined a group, finish_process flushes and exits at once with the
    code (no atexit handlers run); elsewhere it returns the code."""
    from rnnkit.train import finish_process

    assert finish_process(3) == 3
    script = (
        "import atexit, sys\n"
        "import rnnkit.train.distributed as d\n"
        "atexit.register(lambda: print('finalized'))\n"
        "d._JOINED = True\n"
        "print('partial line', end='')\n"
        "sys.stderr.write('err')\n"
        "d.finish_process(7)\n"
        "print('not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7
    assert proc.stdout == "partial line" and proc.stderr == "err"
