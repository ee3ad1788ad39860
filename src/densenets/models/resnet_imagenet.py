"""The paper's ImageNet baselines (Figure 3): torchvision's own ResNets, by name.

The network is whatever ``torchvision.models.resnet34/50/101/152`` builds (no
re-implementation); this module only adopts its submodules under the same names
(``conv1``, ``bn1``, ``layer1``.., ``fc``), so torchvision's weight files load unchanged,
and adds the model surface the engine and the analysis use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .configs import ArchitectureConfig, check_choice, check_num_classes, check_positive_int
from .resnet_cifar import NO_MEMORY_EFFICIENT

ARCHS = ("resnet34", "resnet50", "resnet101", "resnet152")  # Figure 3's ResNets


@dataclass(frozen=True)
class TorchvisionResNetConfig(ArchitectureConfig):
    """Which torchvision ResNet, and the few settings the engine passes to every model."""

    family: ClassVar[str] = "resnet_torchvision"
    stem: ClassVar[str] = "imagenet"

    arch: str = "resnet50"
    num_classes: int = 1000
    in_channels: int = 3
    dropout: float = 0.0
    init: str = "fan_out"

    def __post_init__(self) -> None:
        check_choice("arch", self.arch, ARCHS)
        check_num_classes(self.num_classes)
        check_positive_int("in_channels", self.in_channels)
        if self.dropout != 0:
            raise ConfigError(
                f"torchvision's {self.arch} has no dropout (He et al. use none); got dropout={self.dropout!r}: "
                "train it with --dropout 0"
            )
        check_choice("init", self.init, ("fan_out", "fan_in"))

    @property
    def depth(self) -> int:
        return int(self.arch.removeprefix("resnet"))


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet with the densenets model surface (``forward_features``,
    ``forward_head``, ``forward_blocks``, ``reset_classifier``, ``num_features``,
    ``feature_info``, ``feature_map_layer``, ``config``)."""

    # layer4 ends with its last unit's ReLU and nothing rewrites its output afterwards, so a hook
    # there sees the final map (a hook on ``layer4[-1].relu`` would fire three times per unit).
    feature_map_layer = "layer4"

    def __init__(self, config: TorchvisionResNetConfig) -> None:
        super().__init__()
        import torchvision

        self.config = config
        built = getattr(torchvision.models, config.arch)(weights=None, num_classes=max(config.num_classes, 1))
        for name, module in built.named_children():
            self.add_module(name, module)
        if config.in_channels != 3:
            self.conv1 = nn.Conv2d(config.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode=config.init, nonlinearity="relu")
        if config.init == "fan_in":  # torchvision's own init is He normal, fan-out
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        self.num_features = built.fc.in_features
        if config.num_classes == 0:
            self.fc = nn.Identity()
        self.feature_info: list[dict] = []
        channels = 64
        for i in range(1, 5):
            layer = getattr(self, f"layer{i}")
            out = layer[-1].conv3.out_channels if hasattr(layer[-1], "conv3") else layer[-1].conv2.out_channels
            self.feature_info.append(
                {
                    "module": f"layer{i}",
                    "in_chs": channels,
                    "num_chs": out,
                    "reduction": 2 ** (i + 1),
                    "num_layers": len(layer),
                }  # fmt: skip
            )
            channels = out

    def forward_blocks(self, x: Tensor) -> list[Tensor]:
        """Each stage's output (strides 4, 8, 16, 32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, num_features, H/32, W/32)."""
        return self.forward_blocks(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one (0 removes it)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.config = replace(self.config, num_classes=num_classes)

    def set_memory_efficient(self, enabled: bool = True) -> None:
        """Only DenseNets have a memory-efficient mode; switching it off is a no-op here."""
        if enabled:
            raise ConfigError(NO_MEMORY_EFFICIENT)


def torchvision_published(arch: str) -> dict:
    """torchvision's own figures for its IMAGENET1K_V1 weights: parameters, G multiply-adds, acc@1."""
    from torchvision.models import get_model_weights

    meta = get_model_weights(arch).IMAGENET1K_V1.meta
    return {"params": meta["num_params"], "gmacs": meta.get("_ops"), "acc1": meta["_metrics"]["ImageNet-1K"]["acc@1"]}


VARIANTS: dict[str, TorchvisionResNetConfig] = {arch: TorchvisionResNetConfig(arch) for arch in ARCHS}
