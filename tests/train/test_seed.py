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
