"""A training loader that keeps the whole uint8 data set on the training device.

For data sets that fit in memory (CIFAR, SVHN: 150-220 MB as uint8) the images are put on
the device once; each batch is then gathered, normalised, padded, cropped and flipped there
in a few tensor operations, with no decoding, no per-image Python and no worker processes.

The augmentation is the paper's (zero-pad 4, random 32x32 crop, horizontal flip) in the
authors' order: normalise first, then pad with zeros, so the border is the mean colour.
With progressive resizing (recipe ``train_sizes``) each augmented batch is then resized to
the epoch's size (bilinear, antialiased), so early epochs cost fewer FLOPs.

The shift (``translate``, the padding: the paper's 4 px) and the flips (``flip``: ``"random"``
each epoch, or ``"alternate"``: random in the first epoch, then each image's mirror alternates
from one epoch to the next, airbench's derandomised flips) are settings of the loader.

Its random numbers are drawn per sample index from a generator seeded by (seed, epoch):
the crop and flip of sample i in epoch e do not depend on the batch it lands in, on the
device, or on how many batches a resumed run skips, so exact resume holds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision import datasets as tvd

from ..errors import ConfigError
from .determinism import EpochSeededDataset, derive_seed

PAD = 4  # the paper's zero-padding before the random crop
FLIPS = ("random", "alternate")


def uint8_arrays(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (N, H, W, C) uint8 and labels (N,) int64 behind a CIFAR / SVHN training set.

    Looks through the wrappers the data module puts around them (per-epoch seeding,
    validation ``Subset``, SVHN's train + extra ``ConcatDataset``); anything else raises
    :class:`ConfigError`.
    """
    if isinstance(dataset, EpochSeededDataset):
        return uint8_arrays(dataset.dataset)
    if isinstance(dataset, Subset):
        images, labels = uint8_arrays(dataset.dataset)
        index = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return images[index], labels[index]
    if isinstance(dataset, ConcatDataset):
        parts = [uint8_arrays(d) for d in dataset.datasets]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if isinstance(dataset, (tvd.CIFAR10, tvd.CIFAR100)):  # data: (N, 32, 32, 3) uint8
        return torch.from_numpy(dataset.data), torch.as_tensor(dataset.targets, dtype=torch.long)
    if isinstance(dataset, tvd.SVHN):  # data: (N, 3, 32, 32) uint8
        images = torch.from_numpy(dataset.data).permute(0, 2, 3, 1).contiguous()
        return images, torch.as_tensor(dataset.labels, dtype=torch.long)
    raise ConfigError(
        f"loader 'resident' needs an in-memory CIFAR or SVHN training set, not {type(dataset).__name__}; "
        "use --loader workers"
    )


def augment_batch(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    offsets: torch.Tensor | None = None,
    flips: torch.Tensor | None = None,
    pad: int = PAD,
) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float: normalise, zero-pad, crop at ``offsets``, flip.

    ``offsets`` (B, 2) holds each image's crop origin (row, column) in the padded image,
    in ``[0, 2 * pad]``; ``flips`` (B,) bool mirrors an image left-right. Without offsets
    the images are only normalised. The result is NCHW with channels-last strides.
    """
    x = images.float().div_(255).sub_(mean).div_(std)  # what ToTensor + Normalize compute
    if offsets is None:
        return x.permute(0, 3, 1, 2)
    b, h, w, _ = x.shape
    x = F.pad(x, (0, 0, pad, pad, pad, pad))  # zeros after normalising: the mean colour
    rows = offsets[:, :1] + torch.arange(h, device=x.device)
    across = torch.arange(w, device=x.device)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - across, across)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def progressive_size(epoch: int, epochs: int, sizes: tuple[int, ...] | None) -> int | None:
    """The training image size of ``epoch`` (0-based) when ``sizes`` share the ``epochs`` in equal parts.

    ``None`` without progressive resizing. Part ``i`` covers epochs ``[i * epochs / n, (i + 1) * epochs / n)``.
    """
    if not sizes:
        return None
    return sizes[min(len(sizes) - 1, epoch * len(sizes) // epochs)]


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), bilinear and antialiased, keeping channels-last strides."""
    if x.shape[-2:] == (size, size):
        return x
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


class ResidentLoader:
    """Iterates (images, labels) batches like the training ``DataLoader``, made on ``device``.

    ``sampler`` decides the order (the trainer's resumable, sharded sampler); ``augment``
    is ``"cifar"`` (pad-crop-flip) or ``"none"``. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        sampler,
        batch_size: int,
        preprocess: dict,
        augment: str,
        seed: int,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        channels_last: bool = True,
        translate: int = PAD,
        flip: str = "random",
    ) -> None:
        if augment not in ("cifar", "none") or preprocess.get("resize") or preprocess.get("channels", 3) != 3:
            raise ConfigError(
                f"loader 'resident' supports CIFAR / SVHN preprocessing, not augment {augment!r}; use --loader workers"
            )
        if translate < 0 or flip not in FLIPS:
            raise ConfigError(f"translate must be >= 0 and flip one of {', '.join(FLIPS)}; got {translate}, {flip!r}")
        images, labels = uint8_arrays(dataset)
        self.device = torch.device(device)
        self.images, self.labels = images.to(self.device), labels.to(self.device)
        self.mean = torch.tensor(preprocess["mean"], dtype=torch.float32, device=self.device)
        self.std = torch.tensor(preprocess["std"], dtype=torch.float32, device=self.device)
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.augment, self.seed, self.channels_last = augment, seed, channels_last
        self.translate, self.flip = translate, flip
        self.epoch = 0
        self.size: int | None = None  # progressive resizing: this epoch's image size (None: the images' own)

    def set_epoch(self, epoch: int, size: int | None = None) -> None:
        self.epoch, self.size = epoch, size

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_draws(self) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """Every sample's crop origin and flip for this epoch, indexed by sample."""
        if self.augment == "none":
            return None, None
        g = torch.Generator().manual_seed(derive_seed(self.seed, "resident", self.epoch))
        n = len(self.labels)
        offsets = torch.randint(0, 2 * self.translate + 1, (n, 2), generator=g)
        if self.flip == "alternate":  # one draw for the whole run, mirrored on every other epoch
            first = torch.Generator().manual_seed(derive_seed(self.seed, "resident-flips"))
            flips = torch.randint(0, 2, (n,), generator=first).bool() ^ bool(self.epoch % 2)
        else:
            flips = torch.randint(0, 2, (n,), generator=g).bool()
        return offsets.to(self.device), flips.to(self.device)

    def __iter__(self):
        order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long).to(self.device)
        offsets, flips = self.epoch_draws()
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = augment_batch(
                self.images[index],
                self.mean,
                self.std,
                None if offsets is None else offsets[index],
                None if flips is None else flips[index],
                self.translate,
            )
            if self.size is not None:
                x = resize_batch(x, self.size)
            yield (x if self.channels_last else x.contiguous()), self.labels[index]
