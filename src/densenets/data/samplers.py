"""Samplers for training that can resume mid-epoch, and for sharded evaluation."""

from __future__ import annotations

import itertools

from torch.utils.data import DistributedSampler, Sampler


class ResumableSampler(DistributedSampler):
    """torch's DistributedSampler (seeded, per-epoch shuffle, rank shard) that can skip
    the first ``skip`` indices of the epoch, to continue an interrupted epoch exactly."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.skip = 0

    def set_skip(self, skip: int) -> None:
        self.skip = skip

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(super().__len__() - self.skip, 0)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index starting at ``rank``: each sample evaluated exactly once."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
