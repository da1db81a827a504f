"""rnnkit.train.seed_everything: what it seeds, and what it leaves to child processes."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnnkit.train import seed_everything, seed_rank


@pytest.mark.parametrize("seed", [-1, 2**32, 2**63])
def test_a_seed_outside_pythons_hash_seed_range_leaves_children_able_to_start(seed, monkeypatch):
    """PYTHONHASHSEED was set to ``str(seed)``: a negative seed or one >= 2**32 is not a hash seed
    Python accepts, so every later child process (a spawned DataLoader worker, torchrun, a
    subprocess) died at start with "Fatal Python error: PYTHONHASHSEED must be ...". It is reduced
    modulo 2**32, as NumPy's seed is."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # restored after the test
    seed_everything(seed)
    assert os.environ["PYTHONHASHSEED"] == str(seed % 2**32)
    child = subprocess.run([sys.executable, "-c", "pass"], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr


def test_the_same_seed_draws_the_same_numbers(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_everything(7)
    first = draws()
    seed_everything(7)
    assert draws() == first


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 1.5, True])
def test_a_seed_torch_cannot_take_is_refused_naming_the_range(seed, monkeypatch):
    """2**64 failed in torch.manual_seed with "Overflow when unpacking long long", after Python's and
    NumPy's generators and PYTHONHASHSEED were already set: refused first, naming the range."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    state = random.getstate()
    with pytest.raises(ValueError, match=r"seed must be an integer in \[-2\*\*63, 2\*\*64\), got"):
        seed_everything(seed)
    assert random.getstate() == state and os.environ["PYTHONHASHSEED"] == "0"


@pytest.mark.parametrize("seed", [-(2**63), 2**64 - 1])
def test_the_ends_of_the_range_seed(seed, monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    seed_everything(seed)


def _draws() -> tuple:
    """A dropout mask and a draw of each global RNG."""
    mask = torch.nn.functional.dropout(torch.ones(32), 0.5)
    return tuple(mask.tolist()), random.random(), float(np.random.rand())


def test_seed_rank_gives_each_rank_its_own_streams(monkeypatch):
    """DDP ranks seeded alike drew the same dropout masks on their shares of the batch. After
    seed_rank(rank) (the weights built before it, alike) each rank draws its own, reproducibly;
    rank 0 keeps the streams of one process."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")

    def after(rank: int | None) -> tuple:
        seed_everything(0)
        if rank is not None:
            seed_rank(rank)
        return _draws()

    ranks = [after(r) for r in (0, 1, 2, 3)]
    assert ranks[0] == after(None)
    # every stream differs between every two ranks: the mask, Python's and NumPy's draws
    assert all(x != y for i, a in enumerate(ranks) for b in ranks[:i] for x, y in zip(a, b, strict=True))
    assert after(2) == ranks[2]
    for bad in (-1, 1.0, True, "1"):
        with pytest.raises(ValueError, match=r"rank must be an integer >= 0, got"):
            seed_rank(bad)


def test_a_ddp_trainer_gives_its_rank_its_own_streams(tmp_path, monkeypatch):
    """The Trainer under DDP (a gloo world of one, told it is rank 1 of several) reseeds its rank
    once the model is built: its dropout masks are not rank 0's."""
    from rnnkit.train import Trainer, distributed

    monkeypatch.setenv("PYTHONHASHSEED", "0")
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        monkeypatch.setattr(distributed, "is_distributed", lambda: True)
        masks = []
        for rank in (0, 1):
            monkeypatch.setattr(distributed, "get_rank", lambda rank=rank: rank)
            seed_everything(0)
            model = torch.nn.Linear(3, 2)
            Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), progress=False)
            masks.append(_draws())
        seed_everything(0)
        torch.nn.Linear(3, 2)
        assert masks[0] == _draws() and masks[1] != masks[0]
    finally:
        torch.distributed.destroy_process_group()
