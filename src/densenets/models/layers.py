"""Pieces every network family here shares: the classifier head and the weight init."""

from __future__ import annotations

from torch import nn


def make_classifier(num_features: int, num_classes: int) -> nn.Module:
    """A linear classifier with zero bias; ``num_classes == 0`` means none (identity)."""
    if num_classes == 0:
        return nn.Identity()
    layer = nn.Linear(num_features, num_classes)
    nn.init.zeros_(layer.bias)
    return layer


def init_weights(model: nn.Module, scheme: str) -> None:
    """He-normal convs (``fan_out``: the authors'; ``fan_in``: torchvision's), BN weight 1 bias 0,
    linear biases 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode=scheme, nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
