"""Length-bucketing batch sampler: batches of similar lengths keep padding small."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from rnnkit.data.batching import check_int, epoch_seed

__all__ = ["BucketBatchSampler"]


class BucketBatchSampler(Sampler[list[int]]):
    """Yield lists of dataset indices whose sequence lengths are close.

    ``lengths``: ``(N,)`` ints, the length of each dataset item. Each epoch the indices are
    shuffled, cut into pools of ``bucket_size`` (default ``50 * batch_size``; at least
    ``batch_size``), every pool is sorted by length and cut into batches, and the
    batch order is shuffled. Sorting within pools (not globally) keeps some randomness.
    Use it as ``DataLoader(ds, batch_sampler=..., collate_fn=PadCollate())``.

    For DDP pass ``num_replicas``/``rank``: ``batch_size`` is the global batch (at least
    ``num_replicas``), every global batch is cut into ``num_replicas`` contiguous shards whose
    sizes differ by at most one (the first ``len(batch) % num_replicas`` ranks get one more)
    and each rank yields its own, so every item is trained once and all ranks see the same
    number of batches. Only a short batch (a pool's last, without ``drop_last``) holding fewer
    than ``num_replicas`` items is padded, with items from its start, to one item per rank:
    those items are trained twice in that step. Call ``set_epoch`` each epoch; the order is a
    function of ``(seed, epoch)``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        bucket_size: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        for name, v in (("batch_size", batch_size), ("num_replicas", num_replicas), ("rank", rank)):
            check_int(name, v)
        check_int("bucket_size", bucket_size, none_ok=True)
        check_int("seed", seed)  # a float failed only at iteration, in Generator.manual_seed
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        if batch_size < num_replicas:
            raise ValueError(
                f"batch_size is the global batch and must be >= num_replicas (one item per rank), "
                f"got batch_size={batch_size}, num_replicas={num_replicas}"
            )
        if bucket_size is not None and bucket_size < 1:
            # it was read as "unset" (0) or raised to batch_size (< 0): neither what was asked
            raise ValueError(f"bucket_size must be >= 1 or None (50 * batch_size), got {bucket_size}")
        if not hasattr(lengths, "__len__"):  # (else "object of type 'NoneType' has no len()")
            got = type(lengths).__name__
            raise TypeError(f"lengths must be a sequence of ints (one per item), got {got}")
        if len(lengths) == 0:
            raise ValueError("lengths is empty")
        lens = torch.as_tensor(lengths if isinstance(lengths, torch.Tensor) else list(lengths))
        if lens.dim() != 1 or lens.is_floating_point() or lens.is_complex() or lens.dtype == torch.bool:
            raise ValueError(
                f"lengths must be a 1-D sequence of ints (one per item), got a {lens.dim()}-D "
                f"{lens.dtype} tensor of shape {tuple(lens.shape)}"
            )
        if int(lens.min()) < 0:
            i = int(lens.argmin())
            raise ValueError(f"lengths must be >= 0, got lengths[{i}] = {int(lens[i])}")
        self.lengths = lens.long()
        self.batch_size = batch_size
        self.bucket_size = max(batch_size, bucket_size or 50 * batch_size)
        # int(): manual_seed refuses numpy's integers
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, int(seed)
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        batches: list[list[int]] = []
        for start in range(0, n, self.bucket_size):
            pool = order[start : start + self.bucket_size]
            # stable sort: ties keep the shuffled order
            pool = pool[torch.sort(self.lengths[pool], stable=True).indices]
            for b in range(0, len(pool), self.batch_size):
                batch = pool[b : b + self.batch_size].tolist()
                if len(batch) < self.batch_size and self.drop_last:
                    continue
                batches.append(batch)
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=gen).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            if self.num_replicas == 1:
                yield batch
                continue
            R = self.num_replicas
            if len(batch) < R:  # unavoidable padding: every rank must step, with at least one item
                batch = (batch * R)[:R]
            # balanced shards (sizes q or q + 1): ceil-sized ones left a rank empty and it was
            # given an item of another shard, trained twice, in every batch not a multiple of R
            q, r = divmod(len(batch), R)
            start = self.rank * q + min(self.rank, r)
            yield batch[start : start + q + (self.rank < r)]

    def __len__(self) -> int:
        # Pools can each leave a short batch, so count by building the (cheap) plan.
        return len(self._global_batches())
