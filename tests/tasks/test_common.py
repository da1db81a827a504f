"""The tasks' shared data helper: ``batches``, in one process and as a DDP rank's share."""

from __future__ import annotations

import pytest
import torch

from rnnkit.tasks._common import batches


@pytest.mark.parametrize("seed", [0, 5, -1, -(2**63), 2**63 - 1, 2**63, 2**64 - 3, 2**64 - 1])
def test_a_ranks_order_of_every_epoch_is_that_of_seed_plus_epoch_modulo_2_64(seed):
    """``DistributedSampler`` seeds epoch ``e`` with ``seed + e``, which torch refused from 2**64
    on: ``--seed 18446744073709551615`` (in the range ``--seed`` takes) trained its first epoch
    under torchrun and failed at the second's first batch ("Overflow when unpacking long long").
    The seeds wrap now, as torch reads a negative seed (``s + 2**64``): every seed that worked
    gives the order it gave."""
    loader = batches(list(range(10)), 4, shuffle=True, seed=seed, num_replicas=2, rank=1)
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        g = torch.Generator().manual_seed((seed + epoch) % 2**64)
        expected = torch.randperm(10, generator=g)[1::2].tolist()  # rank 1 of 2: every second one
        assert torch.cat(list(loader)).tolist() == expected, epoch
