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


@pytest.fixture
def failing_model():
    """A model in training mode whose forward raises, with a part frozen in eval mode (its own
    mode, which an evaluation must give back as it was)."""

    class Failing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.frozen = torch.nn.Dropout(0.5).eval()

        def forward(self, x):
            raise RuntimeError("forward failed")

    return Failing()
