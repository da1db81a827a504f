"""rnnkit.train.distributed in one process: the device each rank takes (CUDA faked)."""

import pytest
import torch

from rnnkit.train import distributed


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n, local_rank)``: n visible GPUs, torchrun's LOCAL_RANK, no process group (no
    WORLD_SIZE); returns the devices ``torch.cuda.set_device`` was given."""
    chosen = []

    def fake(n: int, local_rank: int | None) -> list[torch.device]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(torch.device(d)))
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        if local_rank is None:
            monkeypatch.delenv("LOCAL_RANK", raising=False)
        else:
            monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        return chosen

    return fake


@pytest.mark.parametrize("device", [None, "cuda"])
@pytest.mark.parametrize(
    "gpus,local_rank,want",
    [(4, 3, 3), (4, None, 0), (2, 3, 1), (1, 1, 0)],  # a GPU a rank; round robin; one visible per rank
)
def test_cuda_device_follows_local_rank(fake_gpus, device, gpus, local_rank, want):
    """``device="cuda"`` (no index) and the default on a CUDA machine: ``cuda:LOCAL_RANK`` modulo the
    visible GPUs. Before, an explicit ``"cuda"`` put every rank on the current GPU (cuda:0)."""
    chosen = fake_gpus(gpus, local_rank)
    info = distributed.setup_distributed("gloo", device=device)
    assert info.device == torch.device("cuda", want) and chosen == [info.device]
    assert info.local_rank == (local_rank or 0) and info.world_size == 1


@pytest.mark.parametrize("device", ["cuda:1", torch.device("cuda", 1)])
def test_explicit_cuda_index_is_honoured(fake_gpus, device):
    chosen = fake_gpus(4, 3)
    info = distributed.setup_distributed("gloo", device=device)
    assert info.device == torch.device("cuda", 1) and chosen == [info.device]


def test_cpu_device_on_a_cuda_machine(fake_gpus):
    chosen = fake_gpus(4, 3)
    assert distributed.setup_distributed("gloo", device="cpu").device == torch.device("cpu")
    assert chosen == []
