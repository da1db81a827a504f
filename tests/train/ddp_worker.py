"""Worker for test_ddp: the same tiny float64 LM run, launched by torchrun or in-process.

Usage: ``torchrun --nproc_per_node 2 ... ddp_worker.py OUT_DIR`` (or called via ``run``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # torchrun runs this file as a script

from rnnkit.data import bptt_batches, pad_collate  # noqa: E402
from rnnkit.train import Trainer, cleanup_distributed, seed_everything, setup_distributed  # noqa: E402
from tests.train.models import TinyLM, masked_mean_loss, tokens  # noqa: E402

GLOBAL_BATCH, SEQ_LEN = 4, 6
# tests/test_cuda_train.py runs the "empty", "tbptt_weighted" and "step_fn_method" modes on a GPU
# (both ranks on it, gloo over CUDA tensors)
DEVICE = os.environ.get("RNNKIT_TEST_DEVICE", "cpu")


def run(out_dir: str, mode: str = "bptt") -> None:
    torch.set_num_threads(1)
    info = setup_distributed("gloo", device=DEVICE)
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        modes = {
            "bptt": _train,
            "padded": _train_padded,
            "budget": _train_budget,
            "tbptt": _train_tbptt_unequal,
            "empty": _train_empty,
            "tbptt_empty": _train_tbptt_empty,
            "tbptt_weighted": _train_tbptt_weighted,
            "step_fn": _train_step_fn,
            "uneven": _train_uneven,
            "step_fn_method": _train_step_fn_method,
            "callback_stop": _train_callback_stop,
            "locked": _train_locked,
            "resume_short": _train_resume_short,
            "callback_state": _train_callback_state,
        }
        modes[mode](out_dir, info)
    finally:
        torch.set_default_dtype(old_dtype)
        cleanup_distributed()


def _train(out_dir: str, info) -> None:
    seed_everything(0)
    model = TinyLM(vocab=11, hidden=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    data = bptt_batches(tokens(4 * 60), GLOBAL_BATCH, SEQ_LEN, rank=info.rank, world_size=info.world_size)
    val = bptt_batches(tokens(80, seed=3), 2, SEQ_LEN, rank=info.rank, world_size=info.world_size)
    tr = Trainer(
        model,
        opt,
        clip_norm=1.0,
        max_epochs=2,
        val_every=5,
        out_dir=str(Path(out_dir) / "run"),
        progress=False,
        plot=False,
    )
    tr.fit(data, val)
    if info.is_main:
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()},
            str(Path(out_dir) / "params.safetensors"),
        )
        vals = [r["loss"] for r in tr.history if r["split"] == "val"]
        (Path(out_dir) / "result.json").write_text(
            json.dumps({"losses": tr.losses, "val": vals, "world_size": info.world_size})
        )


def _train_padded(out_dir: str, info) -> None:
    """Padded batches of unequal token counts per rank: rank r gets sequences 2r, 2r + 1 of each
    global batch of four (lengths 9, 8 | 3, 2 tokens predicted), padded to its own longest."""
    seed_everything(0)
    model = TinyLM(vocab=11, hidden=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    g = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(6):
        seqs = [torch.randint(0, 11, (n + 1,), generator=g) for n in (9, 8, 3, 2)]
        items = [(s[:-1], s[1:]) for s in seqs]
        mine = items if info.world_size == 1 else items[2 * info.rank : 2 * info.rank + 2]
        batches.append(pad_collate(mine))
    out = Path(out_dir)
    run_dir = str(out / "run")
    tr = Trainer(model, opt, max_epochs=1, carry_state=False, out_dir=run_dir, progress=False, plot=False)
    tr.fit(batches)
    if info.is_main:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "params.safetensors"))
        (out / "result.json").write_text(json.dumps({"losses": tr.losses, "world_size": info.world_size}))


def _train_tbptt_unequal(out_dir: str, info) -> None:
    """tbptt_k1=4 with padded batches: step 1 has time length 8 on both ranks (2 updates each),
    step 2 has 12 on rank 0 (3 updates) and 3 on rank 1 (1 update): every rank must refuse it
    alike, instead of waiting in collectives that do not match."""
    seed_everything(0)
    model = TinyLM(vocab=11, hidden=8)
    g = torch.Generator().manual_seed(5)
    batches = []
    for lengths in ((8, 8, 8, 6), (12, 11, 3, 2)):
        seqs = [torch.randint(0, 11, (n + 1,), generator=g) for n in lengths]
        items = [(s[:-1], s[1:]) for s in seqs]
        batches.append(pad_collate(items[2 * info.rank : 2 * info.rank + 2]))
    tr = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.5), tbptt_k1=4, carry_state=False, progress=False
    )
    try:
        tr.fit(batches)
        error = None
    except ValueError as e:
        error = str(e)
    (Path(out_dir) / f"result{info.rank}.json").write_text(json.dumps({"step": tr.step, "error": error}))


def _train_locked(out_dir: str, info) -> None:
    """out_dir/run is locked by another process (the test): rank 0 cannot take it, and every rank
    must raise at fit's start (the others used to go on to the first all-reduce and wait)."""
    model = TinyLM(vocab=11, hidden=8)
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), out_dir=str(Path(out_dir) / "run"),
                 max_steps=2, progress=False, plot=False)  # fmt: skip
    try:
        tr.fit(bptt_batches(tokens(200), 2, 5))
        error = None
    except RuntimeError as e:
        error = str(e)
    (Path(out_dir) / f"result{info.rank}.json").write_text(json.dumps({"step": tr.step, "error": error}))


def _empty_batches(T: int, ignored) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three global batches of 4 sequences (time-major, T steps); ``ignored(step, t, column)``
    says which targets are -100. Rank r gets columns 2r, 2r + 1 (one process: all four)."""
    g = torch.Generator().manual_seed(5)
    out = []
    for step in range(3):
        x = torch.randint(0, 11, (T, 4), generator=g)
        y = torch.randint(0, 11, (T, 4), generator=g)
        for t in range(T):
            for c in range(4):
                if ignored(step, t, c):
                    y[t, c] = -100
        out.append((x, y))
    return out


def _shard(batch, info):
    if info.world_size == 1:
        return batch
    return tuple(b[:, 2 * info.rank : 2 * info.rank + 2] for b in batch)


def _write_run(out_dir: str, info, tr, model, opt) -> None:
    """Every rank writes its losses, parameters and Adam's step count (0 for SGD)."""
    out = Path(out_dir)
    save_file(
        {k: v.contiguous().cpu() for k, v in model.state_dict().items()},
        str(out / f"params{info.rank}.safetensors"),
    )
    steps = int(opt.state[model.out.bias].get("step", 0)) if opt.state else 0
    (out / f"result{info.rank}.json").write_text(
        json.dumps(
            {"losses": tr.losses, "adam_steps": steps, "tokens": tr.tokens_seen, "device": str(info.device)}
        )
    )


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=0.05)


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.5, momentum=0.5)


def _fit_sharded(out_dir: str, info, steps: int, ignored, optimizer, model_cls=TinyLM, validate=False,
                 **trainer_kw) -> None:  # fmt: skip
    """The modes on :func:`_empty_batches`: seed 0, a tiny ``model_cls``, the global batches of
    ``steps`` steps with ``ignored`` targets sharded over the ranks, a trainer with ``trainer_kw``
    fitted on them (validated on the first batch with ``validate``), then :func:`_write_run`."""
    seed_everything(0)
    model = model_cls(vocab=11, hidden=8)
    opt = optimizer(model.parameters())
    batches = [_shard(b, info) for b in _empty_batches(steps, ignored)]
    tr = Trainer(model, opt, progress=False, **trainer_kw)
    tr.fit(batches, batches[:1] if validate else None)
    _write_run(out_dir, info, tr, model, opt)


def _train_empty(out_dir: str, info) -> None:
    """The simple path (no TBPTT): step 2 has no target on rank 1 (columns 2, 3), step 3 none at all.
    Rank 1's share of step 2 must be a zero gradient, not NaN; step 3 makes no update."""
    _fit_sharded(out_dir, info, 5, lambda step, t, c: step == 2 or (step == 1 and c >= 2), _adam,
                 loss_fn=masked_mean_loss, carry_state=False, device=DEVICE)  # fmt: skip


def _train_tbptt_empty(out_dir: str, info) -> None:
    """tbptt_k1=4 over 8 steps: step 1's first window has no target on rank 1 (columns 2, 3) and
    its second window none on any rank; step 2 has targets everywhere, step 3 only in rank 1's
    second window. Every window with a target somewhere is one update on both ranks."""

    def ignored(step, t, c):
        if step == 0:
            return t >= 4 or c >= 2
        if step == 2:
            return t < 4 or c < 2
        return False

    _fit_sharded(out_dir, info, 8, ignored, _adam, loss_fn=masked_mean_loss, tbptt_k1=4, carry_state=False)


def _train_tbptt_weighted(out_dir: str, info) -> None:
    """TBPTT(4, 6) over 10 steps (the last window short), with ranks holding unequal target counts in
    every window: rank 1's columns (2, 3) keep only every third target. Each window's update must be
    that of the token-weighted mean over the global batch, as in one process with all four columns."""
    _fit_sharded(out_dir, info, 10, lambda step, t, c: c >= 2 and (t + step) % 3 != 0, _sgd,
                 tbptt_k1=4, tbptt_k2=6, clip_norm=0.5, carry_state=False, device=info.device)  # fmt: skip


def _train_step_fn(out_dir: str, info) -> None:
    """A custom ``step_fn`` (masked-mean loss, NaN over no target) with clipping: step 1 has unequal
    target counts on the ranks, step 2 none on rank 1, step 3 none anywhere. As one process."""

    def step_fn(model, batch, state):
        output, state = model(batch[0], state)
        return masked_mean_loss(output, batch[1]), state

    def ignored(step, t, c):
        return step == 2 or (step == 1 and c >= 2) or (step == 0 and c >= 2 and t % 2 == 0)

    _fit_sharded(out_dir, info, 5, ignored, _adam, step_fn=step_fn, clip_norm=0.1, carry_state=True)


class _LossLM(TinyLM):
    def loss(self, batch, state):
        output, state = self(batch[0], state)
        return masked_mean_loss(output, batch[1]), state


def _train_step_fn_method(out_dir: str, info) -> None:
    """A ``step_fn`` calling a method of the model (``model.loss``: the documented teacher-forcing
    example calls ``model.encode``, ``rnnkit train forecast`` ``model.loss``), as in one process."""
    _fit_sharded(out_dir, info, 5, lambda step, t, c: c >= 2 and t % 2 == 0, _sgd, _LossLM, validate=True,
                 step_fn=lambda m, batch, state: m.loss(batch, state), device=info.device)  # fmt: skip


def _train_uneven(out_dir: str, info) -> None:
    """Rank 1's data yields 2 batches an epoch, rank 0's 3: the third step has no batch on rank 1.
    Every rank must refuse it alike, instead of pairing rank 0's third batch with rank 1's next
    epoch (silently) and then waiting in a collective rank 1 never joins (a hang)."""
    seed_everything(0)
    model = TinyLM(vocab=11, hidden=8)
    batches = [_shard(b, info) for b in _empty_batches(5, lambda step, t, c: False)]
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=2, progress=False)
    try:
        tr.fit(batches[: 3 - info.rank])
        error = None
    except ValueError as e:
        error = str(e)
    (Path(out_dir) / f"result{info.rank}.json").write_text(json.dumps({"step": tr.step, "error": error}))


def _train_resume_short(out_dir: str, info) -> None:
    """2 steps of an epoch of 3 batches, checkpointed, then resumed with rank 1's data cut to 1
    batch (fewer than the 2 to skip): every rank must refuse alike (before, rank 1 raised alone and
    rank 0 went on to wait for it in the next collective: a hang)."""
    batches = [_shard(b, info) for b in _empty_batches(5, lambda step, t, c: False)]
    errors = []
    for resume, data in ((False, batches), (True, batches[: 3 - 2 * info.rank])):
        seed_everything(0)
        model = TinyLM(vocab=11, hidden=8)
        tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_steps=2 + resume, resume=resume,
                     out_dir=str(Path(out_dir) / "run"), progress=False, plot=False)  # fmt: skip
        try:
            tr.fit(data)
        except ValueError as e:
            errors.append(str(e))
    (Path(out_dir) / f"result{info.rank}.json").write_text(json.dumps({"step": tr.step, "errors": errors}))


def _train_callback_state(out_dir: str, info) -> None:
    """A callback (run on rank 0 alone) sets the learning rates after step 2 and stops, with its own
    reason, at the second epoch's end (its validation): every rank trains with its rates and stops
    there, with that reason."""
    from rnnkit.train import Callback

    class Tune(Callback):
        def on_step_end(self, trainer, logs):
            if trainer.step == 2:
                for g, lr in zip(trainer.optimizer.param_groups, (0.3, 0.05), strict=True):
                    g["lr"] = lr

        def on_validation_end(self, trainer, logs):
            if trainer.epoch == 1:
                trainer.should_stop, trainer.stop_reason = True, "tuned"

    seed_everything(0)
    model = TinyLM(vocab=11, hidden=8)
    head = list(model.out.parameters())
    body = [p for p in model.parameters() if all(p is not q for q in head)]
    opt = torch.optim.SGD([{"params": body}, {"params": head}], lr=0.1, momentum=0.5)
    batches = [_shard(b, info) for b in _empty_batches(5, lambda step, t, c: False)]
    tr = Trainer(model, opt, max_epochs=5, callbacks=[Tune()], progress=False)
    res = tr.fit(batches, batches[:1])
    _write_run(out_dir, info, tr, model, opt)
    lrs = [g["lr"] for g in opt.param_groups]
    (Path(out_dir) / f"stop{info.rank}.json").write_text(json.dumps([res["step"], res["stop_reason"], lrs]))


def _train_budget(out_dir: str, info) -> None:
    """A time budget whose clocks differ by rank: rank 1 starts its clock 0.5 s after rank 0
    (which then waits for it in the first step), so rank 0's own clock reaches the budget
    steps before rank 1's. Every rank must still stop at the same step."""
    import time

    seed_everything(0)
    model = TinyLM(vocab=11, hidden=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = bptt_batches(tokens(4 * 4000), GLOBAL_BATCH, SEQ_LEN, rank=info.rank, world_size=info.world_size)
    tr = Trainer(model, opt, max_epochs=10**6, max_minutes=1.5 / 60, out_dir=str(Path(out_dir) / "run"),
                 progress=False, plot=False)  # fmt: skip
    if info.rank == 1:  # after the Trainer's DDP set-up, a collective that would re-align them
        time.sleep(0.5)
    res = tr.fit(data)
    (Path(out_dir) / f"result{info.rank}.json").write_text(
        json.dumps({"step": res["step"], "why": res["stop_reason"]})
    )


def _train_callback_stop(out_dir: str, info) -> None:
    """A callback (run on rank 0 alone) stops training after step 3: every rank stops there."""
    from rnnkit.train import Callback

    class StopAt3(Callback):
        def on_step_end(self, trainer, logs):
            trainer.should_stop = trainer.step == 3

    seed_everything(0)
    model = TinyLM(vocab=11, hidden=8)
    data = bptt_batches(tokens(4 * 60), GLOBAL_BATCH, SEQ_LEN, rank=info.rank, world_size=info.world_size)
    tr = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=100, callbacks=[StopAt3()],
                 progress=False)  # fmt: skip
    res = tr.fit(data)
    (Path(out_dir) / f"result{info.rank}.json").write_text(
        json.dumps({"step": res["step"], "why": res["stop_reason"]})
    )


if __name__ == "__main__":
    run(sys.argv[1], *sys.argv[2:])
    # The results are written and the process group destroyed; skip the interpreter's
    # finalization, where gloo's worker threads can still abort the process ("terminate called
    # without an active exception", SIGABRT: seen about once in a few dozen CI runs, pytorch
    # #190489) and fail an otherwise finished run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
