"""A whitened first layer: the stem convolution initialised from the training images' patches.

The stem's filters are set to the leading principal directions of the images' k x k patches,
each scaled by one over the square root of its variance (plus ``eps``), in pairs of opposite
sign so the ReLUs after them keep both halves. Its outputs on the training patches then have
unit variance and no correlation along those directions from the first step, which speeds up
early training (airbench's frozen patch-whitening layer; here the filters are only the start
and keep training). The network stays the same module with the same parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

PATCH_VALUES = 2**29  # patches x patch size above which the covariance comes from a sample of patches
CHUNK_VALUES = 2**23  # values unfolded at once (64 MB in float64)


def patch_covariance(images: torch.Tensor, kernel: int, chunk: int = 256) -> torch.Tensor:
    """Covariance (D, D) of the ``kernel`` x ``kernel`` patches of ``images`` (N, C, H, W), D = C * k * k.

    Every patch while there are at most ``PATCH_VALUES / D`` of them (5,000 CIFAR images with a
    3x3 stem: 4.5M patches); beyond, that many drawn uniformly at random (a fixed seed), so large
    images cost bounded time and memory (DenseNet-121's 7x7 stem at 224 px: 50,176 patches an image).
    """
    n, c, h, w = images.shape
    dims = c * kernel * kernel
    patches, sampled = patch_sample(images.shape, kernel)
    if sampled:
        return _sampled_covariance(images, kernel, sampled)
    chunk = max(1, min(chunk, CHUNK_VALUES // (patches // n * dims)))
    stats = _Moments(dims, images)
    for start in range(0, n, chunk):
        p = F.unfold(images[start : start + chunk].double(), kernel)  # (n, D, L)
        stats.add(p.transpose(1, 2).reshape(-1, dims))
    return stats.covariance()


def patch_sample(shape: torch.Size, kernel: int) -> tuple[int, int]:
    """(patches of images of ``shape`` (N, C, H, W), how many the covariance samples: 0 for all of them)."""
    n, c, h, w = shape
    patches, dims = n * (h - kernel + 1) * (w - kernel + 1), c * kernel * kernel
    return patches, (PATCH_VALUES // dims if patches * dims > PATCH_VALUES else 0)


def _sampled_covariance(images: torch.Tensor, kernel: int, count: int) -> torch.Tensor:
    n, c, h, w = images.shape
    g = torch.Generator().manual_seed(0)
    which = torch.randint(n, (count,), generator=g)
    top = torch.randint(h - kernel + 1, (count,), generator=g)
    left = torch.randint(w - kernel + 1, (count,), generator=g)
    offsets = torch.arange(kernel)
    stats = _Moments(c * kernel * kernel, images)
    step = max(1, CHUNK_VALUES // (c * kernel * kernel))
    for start in range(0, count, step):
        i, y, x = (t[start : start + step].to(images.device) for t in (which, top, left))
        rows = (y[:, None] + offsets.to(y))[:, :, None]  # (P, k, 1)
        cols = (x[:, None] + offsets.to(x))[:, None, :]  # (P, 1, k)
        p = images[i[:, None, None], :, rows, cols]  # (P, k, k, C)
        stats.add(p.permute(0, 3, 1, 2).reshape(len(i), -1).double())  # unfold's order: C, then k x k
    return stats.covariance()


class _Moments:
    """Running sum and sum of outer products of (P, D) rows, in float64."""

    def __init__(self, dims: int, like: torch.Tensor):
        self.total = like.new_zeros(dims, dtype=torch.float64)
        self.outer = like.new_zeros(dims, dims, dtype=torch.float64)
        self.count = 0

    def add(self, rows: torch.Tensor) -> None:
        self.total += rows.sum(0)
        self.outer += rows.T @ rows
        self.count += len(rows)

    def covariance(self) -> torch.Tensor:
        mean = self.total / self.count
        return self.outer / self.count - torch.outer(mean, mean)


def whitening_filters(images: torch.Tensor, kernel: int, out_channels: int, eps: float = 5e-4) -> torch.Tensor:
    """Filters (n, C, k, k), ``n <= out_channels``: the top ``n // 2`` principal patch directions and
    their negatives, each divided by the square root of its variance + ``eps``.

    ``n`` is ``out_channels`` rounded down to even, at most twice the patch dimension.
    """
    c = images.shape[1]
    dims = c * kernel * kernel
    pairs = min(out_channels // 2, dims)
    values, vectors = torch.linalg.eigh(patch_covariance(images, kernel))  # ascending
    top = vectors[:, -pairs:].flip(1).T / (values[-pairs:].flip(0).clamp_min(0) + eps).sqrt()[:, None]
    return torch.cat([top, -top]).reshape(2 * pairs, c, kernel, kernel).float()


def whiten_stem(model: nn.Module, images: torch.Tensor, eps: float = 5e-4) -> str:
    """Initialise ``model.features.conv0`` (a 2-D DenseNet's stem) from ``images`` (N, C, H, W),
    normalised as the network sees them; filters beyond the whitening ones keep their initialisation.

    Returns:
        A line saying what was done.

    Raises:
        ConfigError: The model has no 2-D stem convolution, or ``images`` do not match it.
    """
    conv = getattr(getattr(model, "features", None), "conv0", None)
    if not isinstance(conv, nn.Conv2d) or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ConfigError("whiten_stem needs a 2-D DenseNet with a square stem convolution (features.conv0)")
    if images.ndim != 4 or images.shape[1] != conv.in_channels:
        raise ConfigError(f"whiten_stem needs (N, {conv.in_channels}, H, W) images, got {tuple(images.shape)}")
    k = conv.kernel_size[0]
    filters = whitening_filters(images, k, conv.out_channels, eps)
    with torch.no_grad():
        conv.weight[: len(filters)].copy_(filters.to(conv.weight))
    n = len(filters)
    rest = f"; the other {conv.out_channels - n} keep their initialisation" if n < conv.out_channels else ""
    patches, sampled = patch_sample(images.shape, k)
    sample = f" (a random {sampled:,} of their {patches:,} patches)" if sampled else ""
    return (
        f"stem: conv0's {n} of {conv.out_channels} filters whiten {k}x{k} patches (top {n // 2} principal "
        f"directions, both signs) from {len(images)} training images{sample}{rest}"
    )
