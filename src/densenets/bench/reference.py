"""torchvision's DenseNet built with the same architecture as one of ours, same weights."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torchvision.models import DenseNet as TorchvisionDenseNet

from ..models import DenseNet


def torchvision_twin(model: DenseNet) -> nn.Module:
    """torchvision's implementation of ``model``'s architecture, loaded with its weights.

    torchvision only builds DenseNet-BC with compression 0.5 (its transitions halve the
    maps) and the ImageNet stem; a CIFAR stem is swapped in as one 3x3 conv.
    """
    c = model.config
    if not c.bottleneck or c.compression != 0.5:
        raise ValueError("torchvision's DenseNet only has the -BC form (bottleneck, compression 0.5)")
    twin = TorchvisionDenseNet(
        growth_rate=c.growth_rate,
        block_config=c.block_sizes,
        num_init_features=c.init_channels,
        bn_size=c.bn_size,
        drop_rate=0.0,
        num_classes=c.num_classes,
    )
    if c.stem == "cifar":
        twin.features.conv0 = nn.Conv2d(c.in_channels, c.init_channels, 3, 1, 1, bias=False)
        for name in ("norm0", "relu0", "pool0"):
            setattr(twin.features, name, nn.Identity())
    elif c.in_channels != 3:
        twin.features.conv0 = nn.Conv2d(c.in_channels, c.init_channels, 7, 2, 3, bias=False)
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin.train(model.training)


@contextlib.contextmanager
def exact_fp32():
    """Compare in true fp32: TF32 convolutions on NVIDIA GPUs differ by ~1e-3 between algorithms."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def check_same_outputs(ours: nn.Module, reference: nn.Module, x: torch.Tensor, rtol: float = 1e-4) -> float:
    """Max |difference| of outputs, relative to the reference's largest |output| (at least 1);
    raises if above ``rtol``. The one equality check of the benchmark."""
    with torch.no_grad(), exact_fp32():
        expected = reference(x)
        diff = (ours(x) - expected).abs().max().item() / max(expected.abs().max().item(), 1.0)
    if not diff <= rtol:
        raise AssertionError(f"outputs differ from torchvision's by {diff:.3g} (relative, > {rtol}); not timing them")
    return diff
