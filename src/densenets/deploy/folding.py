"""BatchNorm folding: a BatchNorm that follows a conv becomes that conv's weights and bias (exact).

Only the stem's ``norm0`` (ImageNet stem) and each bottleneck's ``norm2`` follow a conv; every
other BatchNorm in a DenseNet precedes a ReLU on concatenated maps and cannot fold.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..models.batchnorm import batchnorm_scale_shift
from ..models.densenet import DenseLayer, DenseNet


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``bn(conv(x))`` as one conv: its ``(weight, bias)`` (new fp32 tensors)."""
    scale, shift = batchnorm_scale_shift(bn)
    weight = conv.weight.detach() * scale.view(-1, *(1,) * (conv.weight.dim() - 1))  # any spatial dims
    bias = shift if conv.bias is None else shift + conv.bias.detach() * scale
    return weight, bias


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv of ``conv``'s kind (1-, 2- or 3-D, with bias) equal to ``bn(conv(x))`` in eval mode."""
    weight, bias = fold_conv_bn(conv, bn)
    folded = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True)  # fmt: skip
    with torch.no_grad():
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    return folded


def folded_copy(model: DenseNet) -> DenseNet:
    """An eval fp32 CPU copy in which every BatchNorm that follows a conv is folded into it (same outputs)."""
    model = copy.deepcopy(model).cpu().eval().float()
    model.set_memory_efficient(False)
    features = model.features
    if model.config.stem == "imagenet":
        features.conv0 = folded_conv(features.conv0, features.norm0)
        features.norm0 = nn.Identity()
    for layer in model.modules():
        if isinstance(layer, DenseLayer) and layer.bottleneck:
            layer.conv1 = folded_conv(layer.conv1, layer.norm2)
            layer.norm2 = nn.Identity()
    return model
