"""Worker for test_ddp_best: early stopping, ``save_best``, the refusal of an earlier run's
``out_dir`` and the LR scheduler under torchrun (2 gloo ranks, tiny float64 runs).

Usage: ``torchrun --nproc_per_node 2 ... ddp_best_worker.py OUT_DIR MODE``; every rank writes
``OUT_DIR/result<rank>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # torchrun runs this file as a script

from rnnkit.data import bptt_batches  # noqa: E402
from rnnkit.train import (  # noqa: E402
    Trainer,
    cleanup_distributed,
    load_checkpoint,
    seed_everything,
    setup_distributed,
)
from tests.train.ddp_worker import _empty_batches, _shard  # noqa: E402
from tests.train.models import TinyLM, masked_mean_loss, tokens  # noqa: E402


def run(out_dir: str, mode: str) -> None:
    torch.set_num_threads(1)
    info = setup_distributed("gloo", device="cpu")
    torch.set_default_dtype(torch.float64)
    try:
        modes = {"earlier_run": _earlier_run, "best": _best, "scheduler": _scheduler}
        res = {**modes, "best_fails": _best_fails}[mode](Path(out_dir), info)
        (Path(out_dir) / f"result{info.rank}.json").write_text(json.dumps(res))
    finally:
        cleanup_distributed()


def _data(info):
    return bptt_batches(tokens(4 * 60), 4, 6, rank=info.rank, world_size=info.world_size)


def _val(info):
    return bptt_batches(tokens(80, seed=3), 2, 6, rank=info.rank, world_size=info.world_size)


def _trainer(out: Path, **kw) -> Trainer:
    seed_everything(0)
    model = TinyLM(vocab=11, hidden=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    return Trainer(model, opt, out_dir=str(out), progress=False, plot=False, tensorboard=False, **kw)


def _earlier_run(out: Path, info) -> dict:
    """A new run into an out_dir holding a finished run's checkpoints: refused on every rank."""
    _trainer(out / "run", max_steps=2).fit(_data(info))
    try:
        _trainer(out / "run", max_steps=2).fit(_data(info))
    except Exception as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": None}


class _Snapshots(Trainer):
    """A Trainer keeping the weights each of its validations evaluated, by step (on every rank)."""

    def _validate(self, val_data) -> None:
        self.validated = getattr(self, "validated", {})
        self.validated[self.step] = {k: v.clone() for k, v in self.raw_model.state_dict().items()}
        super()._validate(val_data)


def _best(out: Path, info) -> dict:
    """Early stopping with save_best (a validation every step; at lr 4 the 10th is the best, the
    next 3 worse), uninterrupted, and stopped at step 7 then resumed."""

    def fit(name: str, max_steps: int, resume: bool) -> tuple[Trainer, dict]:
        seed_everything(0)
        model = TinyLM(vocab=11, hidden=8)
        tr = _Snapshots(model, torch.optim.SGD(model.parameters(), lr=4.0, momentum=0.5), max_epochs=100,
                        max_steps=max_steps, val_every=1, checkpoint_every=2, patience=3,
                        save_best=True, resume=resume, out_dir=str(out / name), progress=False, plot=False,
                        tensorboard=False)  # fmt: skip
        return tr, tr.fit(_data(info), _val(info))

    whole, res = fit("whole", 40, False)
    fit("split", 7, False)
    split, res_split = fit("split", 40, True)
    best = TinyLM(vocab=11, hidden=8)
    doc = load_checkpoint(out / "whole" / "best", best)
    mine = whole.validated[doc["step"]]
    return {
        "stop": [res["step"], res["stop_reason"], res_split["step"], res_split["stop_reason"]],
        "best": [doc["step"], doc["state"]["val_loss"], whole.best_val],
        "best_split": load_checkpoint(out / "split" / "best")["step"],
        "best_is_validated": all(torch.equal(v, mine[k]) for k, v in best.state_dict().items()),
        "best_dirs": sorted(p.name for p in (out / "whole" / "best").iterdir()),
        "resumed_exact": whole.losses == split.losses and whole.best_val == split.best_val,
        "losses": whole.losses,
    }


def _best_fails(out: Path, info) -> dict:
    """Rank 0 alone fails writing best/ (a full disk): the error propagates through run()'s
    ``finally: cleanup_distributed()`` while rank 1 goes on to its next collective."""
    tr = _trainer(out / "run", max_steps=4, val_every=1, save_best=True)
    if info.rank == 0:

        def full(val_loss: float):
            raise OSError(28, "No space left on device (rank 0 writing best/)")

        tr.save_best = full
    tr.fit(_data(info), _val(info))
    return {}


def _scheduler(out: Path, info) -> dict:
    """StepLR over 3 steps: the second has no target on rank 1, the third none on any rank. The
    scheduler steps on the first two, on every rank (in one update and in TBPTT windows)."""
    res = {}
    for k1 in (None, 4):
        seed_everything(0)
        model = TinyLM(vocab=11, hidden=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
        ignored = lambda step, t, c: step == 2 or (step == 1 and c >= 2)  # noqa: E731
        batches = [_shard(b, info) for b in _empty_batches(8, ignored)]
        tr = Trainer(model, opt, scheduler=sched, loss_fn=masked_mean_loss, carry_state=False, tbptt_k1=k1,
                     progress=False)  # fmt: skip
        tr.fit(batches)
        res[str(k1)] = [sched.last_epoch, opt.param_groups[0]["lr"]]
    return res


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
    # finished and the group destroyed: skip finalization, where gloo's threads can abort (ddp_worker)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
