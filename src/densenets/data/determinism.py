"""Randomness that depends only on (seed, epoch, index), never on workers or timing.

This is what makes a resumed run bit-identical to an uninterrupted one: the random crop
and flip of sample i in epoch e are the same whichever worker loads it, and however
many batches were skipped on resume.
"""

from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Dataset


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes and runs)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSeededDataset(Dataset):
    """Runs the wrapped data set's random transforms under a per-(epoch, index) seed."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        # Seed only the CPU generator (what torchvision's transforms draw from), then put
        # its state back; torch.manual_seed would also touch CUDA and is ~50x slower.
        generator = torch.default_generator
        saved = generator.get_state()
        generator.manual_seed(derive_seed(self.seed, "sample", self.epoch, index))
        try:
            return self.dataset[index]
        finally:
            generator.set_state(saved)
