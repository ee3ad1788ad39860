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


def patch_covariance(images: torch.Tensor, kernel: int, chunk: int = 256) -> torch.Tensor:
    """Covariance (D, D) of every ``kernel`` x ``kernel`` patch of ``images`` (N, C, H, W), D = C * k * k."""
    dims = images.shape[1] * kernel * kernel
    total, outer, count = (
        images.new_zeros(dims, dtype=torch.float64),
        images.new_zeros(dims, dims, dtype=torch.float64),
        0,
    )
    for start in range(0, len(images), chunk):
        p = F.unfold(images[start : start + chunk].double(), kernel)  # (n, D, L)
        p = p.transpose(1, 2).reshape(-1, dims)
        total += p.sum(0)
        outer += p.T @ p
        count += len(p)
    mean = total / count
    return outer / count - torch.outer(mean, mean)


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
    return (
        f"stem: conv0's {n} of {conv.out_channels} filters whiten {k}x{k} patches (top {n // 2} principal "
        f"directions, both signs) from {len(images)} training images{rest}"
    )
