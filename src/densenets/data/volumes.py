"""Volumes (CT, MRI) listed in a labels CSV: ``.npy`` arrays and NIfTI files, read as (C, D, H, W) tensors.

A ``.npy`` file holds (D, H, W) or (C, D, H, W); a NIfTI file (``.nii``, ``.nii.gz``; ``pip install
'densenets[volumes]'`` for nibabel) holds its voxel array as stored, (X, Y, Z) read as (D, H, W),
a 4th axis as channels. Each volume is normalised on its own: a z-score per channel, or with
``intensity_window=(low, high)`` clipped to the window (Hounsfield units, as CT users do) and
scaled to [0, 1]; then resized (trilinear) to ``volume_size``. Training adds a flip along each
axis and a random crop of the volume padded by an eighth of its size, all on tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError

VOLUME_SUFFIXES = (".npy", ".nii", ".nii.gz")


def is_volume(path: str | Path) -> bool:
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def read_volume(path: str | Path) -> Tensor:
    """The volume at ``path`` as a float32 (C, D, H, W) tensor; anything wrong raises one :class:`DataError`
    (the caller adds the CSV line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"volume {path} not found")
    try:
        npy = str(path).lower().endswith(".npy")
        array = np.load(path, allow_pickle=False) if npy else _read_nifti(path)
    except DataError:
        raise
    except Exception as exc:  # numpy and nibabel raise many types for damaged files
        raise DataError(f"{path} is not a readable volume ({type(exc).__name__}: {exc})") from exc
    if array.ndim == 4 and not str(path).lower().endswith(".npy"):
        array = np.moveaxis(array, -1, 0)  # NIfTI keeps extra axes last
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise DataError(f"{path} has {array.ndim} dimensions; a volume is (D, H, W) or (C, D, H, W)")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"{path} holds {array.dtype} values, not real numbers")
    volume = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.isfinite(volume).all():
        raise DataError(f"{path} holds NaN or Inf values")
    return volume


def _read_nifti(path: Path) -> np.ndarray:
    try:
        import nibabel  # optional dependency
    except ImportError as exc:
        raise DataError(f"{path}: reading NIfTI volumes needs `pip install 'densenets[volumes]'` (nibabel)") from exc
    return np.asarray(nibabel.load(str(path)).get_fdata(dtype=np.float32))


def normalise(volume: Tensor, window: Sequence[float] | None = None) -> Tensor:
    """Per volume: clip to ``window`` and scale to [0, 1], or (no window) a z-score per channel."""
    if window is not None:
        low, high = float(window[0]), float(window[1])
        return (volume.clamp(low, high) - low) / (high - low)
    flat = volume.flatten(1)
    mean, std = flat.mean(1), flat.std(1, correction=0).clamp_min(1e-6)  # a constant channel becomes zeros
    shape = (-1, *(1,) * (volume.dim() - 1))
    return (volume - mean.view(shape)) / std.view(shape)


def resize(volume: Tensor, size: Sequence[int]) -> Tensor:
    """(C, D, H, W) to (C, *size), trilinear; unchanged when it already has that size."""
    if tuple(volume.shape[1:]) == tuple(size):
        return volume
    return F.interpolate(volume[None], size=tuple(size), mode="trilinear", align_corners=False)[0]


def flip_and_crop(volume: Tensor) -> Tensor:
    """A flip along each spatial axis with probability 1/2, then a random crop of the volume padded by
    an eighth of each side (the torch generator: seeded per sample by ``EpochSeededDataset``)."""
    for axis in range(1, volume.dim()):
        if torch.rand(()) < 0.5:
            volume = volume.flip(axis)
    size = volume.shape[1:]
    pads = [s // 8 for s in size]
    padding = [p for pad in reversed(pads) for p in (pad, pad)]
    padded = F.pad(volume, padding)
    starts = [int(torch.randint(0, 2 * p + 1, ())) for p in pads]
    window = tuple(slice(s, s + n) for s, n in zip(starts, size, strict=True))
    return padded[(slice(None), *window)]


class VolumeTransform:
    """normalise -> resize [-> flip and crop]: the whole preprocessing of one volume, from a preprocess record."""

    def __init__(self, preprocess: dict, train: bool = False) -> None:
        self.size = tuple(int(s) for s in preprocess["volume_size"])
        window = preprocess.get("intensity_window")
        self.window = tuple(float(w) for w in window) if window else None
        self.train = train

    def __call__(self, volume: Tensor) -> Tensor:
        volume = resize(normalise(volume, self.window), self.size)
        return flip_and_crop(volume) if self.train else volume


def check_window(window: Sequence[float] | None) -> None:
    if window is not None and (len(window) != 2 or not float(window[0]) < float(window[1])):
        raise DataError(f"--intensity-window takes LOW HIGH with LOW < HIGH, got {list(window)}")


def minimum_size(config) -> int:
    """The smallest side a DenseNet's input may have: every pooling must leave at least one voxel."""
    for side in range(1, 1 << 16):
        n = side
        if config.stem == "imagenet":
            n = (n - 1) // 2 + 1  # conv 7, stride 2, padding 3
            n = (n - 1) // 2 + 1  # max-pool 3, stride 2, padding 1
        for _ in range(len(config.block_sizes) - 1):
            n //= 2  # each transition's 2x2 average pool
        if n >= 1:
            return side
    raise AssertionError("unreachable")


def check_volumes(table, size: Sequence[int] | None, skip_bad: bool) -> tuple[list[int], list[str], int, tuple]:
    """(rows to keep, rows left out, channels, (D, H, W) for the network, where that size comes from).

    Every volume is read once up front: unreadable, of the wrong number of dimensions, holding NaN
    or Inf, or (no ``size``) of another shape than the first stops the run naming its CSV line
    (with ``skip_bad`` the unreadable ones are left out instead)."""
    keep, skipped, channels, shape, first = [], [], None, None, None
    for i, (path, line) in enumerate(zip(table.paths, table.lines, strict=True)):
        try:
            volume = read_volume(path)
        except DataError as exc:
            if skip_bad:
                skipped.append(f"line {line}")
                continue
            raise DataError(f"{table.where(line)}: {exc}; fix the row or pass --skip-bad-images") from exc
        if channels is None:
            channels, shape, first = int(volume.shape[0]), tuple(volume.shape[1:]), line
        elif volume.shape[0] != channels:
            raise DataError(f"{table.where(line)}: {volume.shape[0]} channels, line {first} has {channels}")
        elif size is None and tuple(volume.shape[1:]) != shape:
            raise DataError(
                f"{table.where(line)}: volume of {_dims(volume.shape[1:])}, line {first} is {_dims(shape)}; "
                "pass --volume-size D H W to resize them all"
            )
        keep.append(i)
    if channels is None:
        raise DataError(f"{table.csv_path}: no readable volume")
    if size is not None:
        return keep, skipped, channels, (tuple(int(s) for s in size), "--volume-size")
    return keep, skipped, channels, (shape, table.where(first))


def _dims(shape) -> str:
    return "x".join(str(int(s)) for s in shape)
