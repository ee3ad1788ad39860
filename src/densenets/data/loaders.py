"""The training loader a recipe asks for: worker processes or device-resident.

``"workers"``: torch's ``DataLoader`` over the data set (decode and augment per image, in
``workers`` processes, or in the training process when 0). ``"resident"``: the whole uint8
data set on the training device, augmented there in batches (:mod:`.resident`). Both
iterate the same sampler, so they visit the same images in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError
from .datasets import DataBundle
from .determinism import derive_seed
from .resident import PAD, ResidentLoader, progressive_size
from .samplers import ResumableSampler

LOADERS = ("workers", "resident")
# Data sets held in memory as uint8 arrays by their torchvision classes.
RESIDENT_DATA = ("cifar10", "cifar10+", "cifar100", "cifar100+", "svhn")


def default_loader(data: str, device_type: str) -> str:
    """``resident`` for in-memory data sets on any device, else ``workers``.

    On CUDA it takes decoding and augmentation off the CPU; on the CPU it was measured
    faster too (docs/reproduction.md: CIFAR-10, 1 thread: see the pipeline table), so
    the device does not change the choice today.
    """
    del device_type  # kept in the signature: the choice is per device by design
    return "resident" if data in RESIDENT_DATA else "workers"


def default_workers(device_type: str) -> int:
    """0 on the CPU (loading competes with compute for the cores), 8 on CUDA."""
    return 8 if device_type == "cuda" else 0


@dataclass
class TrainLoader:
    """The training batches of one rank, plus what must be set at the start of each epoch."""

    kind: str
    batches: object  # DataLoader or ResidentLoader
    sampler: ResumableSampler
    seed: int
    rank: int
    sizes: tuple[int, ...] | None = None  # progressive resizing (resident loader only)
    epochs: int = 1

    def start_epoch(self, epoch: int, skip: int) -> None:
        """Order and augmentation of ``epoch``; the first ``skip`` samples were already trained on."""
        self.sampler.set_epoch(epoch)
        self.sampler.set_skip(skip)
        if self.kind == "resident":
            self.batches.set_epoch(epoch, progressive_size(epoch, self.epochs, self.sizes))
            return
        if hasattr(self.batches.dataset, "set_epoch"):
            self.batches.dataset.set_epoch(epoch)
        self.batches.generator.manual_seed(derive_seed(self.seed, "workers", epoch, self.rank))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_train_loader(
    data: DataBundle,
    kind: str,
    batch_size: int,
    seed: int,
    device: torch.device,
    workers: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    channels_last: bool = True,
    worker_init_fn=None,
    train_sizes: tuple[int, ...] | None = None,
    epochs: int = 1,
    translate: int = PAD,
    flip: str = "random",
) -> TrainLoader:
    """The training loader ``kind`` for one rank of a (possibly distributed) run.

    ``train_sizes`` (progressive resizing over ``epochs``) needs the resident loader, and its
    last size must be the data's input size. ``translate`` and ``flip`` other than the paper's
    (4 px, random) need it too.
    """
    if kind not in LOADERS:
        raise ConfigError(f"loader must be one of {', '.join(LOADERS)}; got {kind!r}")
    if train_sizes and kind != "resident":
        raise ConfigError("train_sizes (progressive resizing) needs the resident loader (CIFAR / SVHN in memory)")
    if (translate, flip) != (PAD, "random") and kind != "resident":
        raise ConfigError(
            f"translate {translate} / flip {flip!r} need the resident loader (CIFAR / SVHN in memory); "
            f"the workers loader shifts by {PAD} px and flips at random"
        )
    if train_sizes and train_sizes[-1] != data.image_size:
        raise ConfigError(
            f"train_sizes must end at the input size the model is evaluated at ({data.image_size} px), "
            f"got {list(train_sizes)}"
        )
    sampler = ResumableSampler(
        data.train, num_replicas=world_size, rank=rank, seed=derive_seed(seed, "order") % 2**31, drop_last=False
    )
    if kind == "resident":
        batches = ResidentLoader(
            data.train,
            sampler,
            batch_size,
            data.preprocess,
            data.augment,
            seed,
            device,
            drop_last,
            channels_last,
            translate,
            flip,
        )
    else:
        pin = device.type == "cuda"
        workers = default_workers(device.type) if workers is None else workers
        batches = DataLoader(
            data.train,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=pin,
            drop_last=drop_last,
            generator=torch.Generator(),
            worker_init_fn=worker_init_fn if workers else None,
        )
    return TrainLoader(kind, batches, sampler, seed, rank, train_sizes, epochs)
