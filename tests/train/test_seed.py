"""rnnkit.train.seed_everything: what it seeds, and what it leaves to child processes."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from rnnkit.train import seed_everything


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
