"""``data_config(model)`` and ``transforms(model)``: the input a model expects, as torchvision transforms."""

from __future__ import annotations

from torch import nn
from torchvision import transforms as T

from .data.transforms import transforms_from_config
from .models.pretrained import data_config


def transforms(model: nn.Module, train: bool = False) -> T.Compose:
    """The transforms matching ``model.pretrained_cfg`` (test-time unless ``train``)."""
    return transforms_from_config(data_config(model), train)


__all__ = ["data_config", "transforms"]
