"""Eval-mode BatchNorm as a per-channel scale and shift: the one home of that rule."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def batchnorm_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``bn(x) == scale * x + shift`` per channel in eval mode (new tensors).

    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``;
    a BN without affine parameters counts as weight 1, bias 0.
    """
    invstd = torch.rsqrt(bn.running_var + bn.eps)
    scale = invstd * bn.weight if bn.weight is not None else invstd.clone()
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach().clone(), shift.detach().clone()
