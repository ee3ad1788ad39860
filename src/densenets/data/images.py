"""Image files read one at a time (predict, int8 calibration) and a data set seen through another transform."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image
from torch.utils.data import Dataset, Subset

from ..errors import DataError
from .determinism import EpochSeededDataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def read_image(path: str | Path | BinaryIO, max_pixels: int | None = None) -> Image.Image:
    """Open and decode an image fully (so truncated files fail here, not later).

    ``max_pixels``: refuse larger images from their header, before decoding a byte of them
    (a server's decompression-bomb limit; PIL's own, about 89 megapixels, always holds).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(path)
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise Image.DecompressionBombError(f"{width}x{height} pixels, beyond the limit of {max_pixels:,}")
        image.load()
    return image


def with_transform(dataset: Dataset, transform) -> Dataset:
    """A shallow copy of a (possibly Subset-wrapped) data set with another transform."""
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    if isinstance(dataset, EpochSeededDataset):  # the seeding is for random transforms; the new one is fixed
        return with_transform(dataset.dataset, transform)
    if not hasattr(dataset, "transform"):
        raise DataError(f"{type(dataset).__name__} has no transform to replace")
    clone = copy.copy(dataset)
    clone.transform = transform
    return clone
