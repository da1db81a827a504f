import pytest
import torch

# Tiny models on a small shared machine: one intra-op thread is faster and stabler.
torch.set_num_threads(1)


@pytest.fixture
def tiny_rolls(tmp_path):
    """A small random piano-roll data set in the music study's .npz format."""
    import numpy as np

    from rnnkit.study import music

    rng = np.random.default_rng(0)
    rolls = {
        split: [
            (rng.random((int(rng.integers(6, 14)), music.KEYS)) < 0.05).astype(np.uint8) for _ in range(n)
        ]
        for split, n in (("train", 6), ("valid", 3), ("test", 3))
    }
    path = tmp_path / "rolls.npz"
    music.save_rolls(path, rolls)
    return path, rolls
