"""``data_config(model)`` and ``transforms(model)``: the input a model expects, as torchvision transforms."""

from __future__ import annotations

from torch import nn
from torchvision import transforms as T

from .data.transforms import transforms_from_config
from .models.pretrained import data_config


def transforms(model: nn.Module, train: bool = False) -> T.Compose:
    """Torchvision transforms that make an image the input ``model`` expects.

    Args:
        model: One of our models; its ``pretrained_cfg`` gives size, mean, std and channels.
        train: The training augmentation instead of the test-time transform.

    Returns:
        A ``torchvision.transforms.Compose`` from a PIL image to a normalised tensor.

    Example:
        >>> model = densenets.load("runs/ft-pre")  # doctest: +SKIP
        >>> batch = densenets.transforms(model)(image).unsqueeze(0)  # doctest: +SKIP
    """
    return transforms_from_config(data_config(model), train)


__all__ = ["data_config", "transforms"]
