"""The paper's CIFAR/SVHN baselines (Table 2, Figure 4): ResNets built for 32x32 inputs.

One network, three kinds of residual unit, as the three papers describe them:

- ``basic`` -- He et al. 2016a ("Deep Residual Learning"), section 4.2: 3x3 stem with 16
  maps, three stages of n two-conv units (16, 32, 64 maps), depth 6n + 2, post-activation
  (conv-BN-ReLU-conv-BN, add, ReLU) and **option A** shortcuts: identity, with stride-2
  subsampling and zero-padded extra channels where the shape changes (no parameters).
  ResNet-110 (n = 18) and ResNet-1202 (n = 200); with ``stochastic_depth`` it is the network
  of Huang et al. 2016 ("Deep Networks with Stochastic Depth").
- ``preact_bottleneck`` -- He et al. 2016b ("Identity Mappings"): pre-activation
  BN-ReLU-1x1-BN-ReLU-3x3-BN-ReLU-1x1 units of 16/32/64 inner and 64/128/256 output maps,
  depth 9n + 2, 1x1 projection shortcuts (option B) where the shape changes; the unit's
  first BN-ReLU feeds both the branch and the projection. ResNet-164 (n = 18), -1001 (n = 111).
- ``wide`` -- Zagoruyko & Komodakis 2016 ("Wide Residual Networks"): pre-activation
  BN-ReLU-3x3-BN-ReLU-[dropout]-3x3 units of 16k/32k/64k maps, depth 6n + 4, 1x1
  projection shortcuts where the shape changes. WRN-16-8, WRN-28-10, WRN-16-4.

Submodule names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1``.., ``fc``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .configs import ArchitectureConfig, check_choice, check_fraction, check_num_classes, check_positive_int
from .layers import init_weights, make_classifier

Unit = Literal["basic", "preact_bottleneck", "wide"]
Shortcut = Literal["A", "B"]

_UNITS = ("basic", "preact_bottleneck", "wide")
NO_MEMORY_EFFICIENT = (
    "memory_efficient is DenseNet's recomputed concatenation (Pleiss et al.); a ResNet has no "
    "concatenations to recompute: train it without --memory-efficient"
)
# depth = per_unit * units_per_stage * 3 + extra: the stem conv and the classifier (+2 for WRN's
# counting, which also includes the two projection convs between stages).
_DEPTH_RULE = {"basic": (2, 2), "preact_bottleneck": (3, 2), "wide": (2, 4)}


@dataclass(frozen=True)
class CifarResNetConfig(ArchitectureConfig):
    """A CIFAR ResNet: unit kind, depth and width, and the options the three papers vary.

    ``stochastic_depth`` is 1 - p_L of Huang et al. 2016: unit l of L is skipped for a whole
    mini-batch with probability l / L * stochastic_depth (linear decay; the paper uses
    p_L = 0.5, i.e. 0.5 here) and scaled by its survival probability at test time.
    ``dropout`` sits between the two convs of every unit (WRN's place; He et al. use none).
    """

    family: ClassVar[str] = "resnet_cifar"
    stem: ClassVar[str] = "cifar"

    unit: Unit = "basic"
    depth: int = 110
    widen_factor: int = 1
    shortcut: Shortcut = "A"
    dropout: float = 0.0
    stochastic_depth: float = 0.0
    in_channels: int = 3
    num_classes: int = 10
    init: str = "fan_out"

    def __post_init__(self) -> None:
        check_choice("unit", self.unit, _UNITS)
        if self.shortcut not in ("A", "B"):
            raise ConfigError(
                f"shortcut must be A (identity, zero-padded) or B (1x1 projection); got {self.shortcut!r}"
            )
        for name in ("depth", "widen_factor", "in_channels"):
            check_positive_int(name, getattr(self, name))
        per_unit, extra = _DEPTH_RULE[self.unit]
        step = 3 * per_unit
        if self.depth < step + extra or (self.depth - extra) % step:
            valid = ", ".join(str(step * n + extra) for n in (1, 2, 3, 18))
            raise ConfigError(
                f"depth {self.depth} is impossible for {self.unit} units: (depth - {extra}) must be a positive "
                f"multiple of {step}, e.g. {valid}"
            )
        check_num_classes(self.num_classes)
        check_fraction("dropout", self.dropout, zero=True, one=False)
        note = " (1 - survival of the last unit; paper: 0.5)"
        check_fraction("stochastic_depth", self.stochastic_depth, zero=True, one=False, note=note)
        check_choice("init", self.init, ("fan_out", "fan_in"))

    @property
    def units_per_stage(self) -> int:
        per_unit, extra = _DEPTH_RULE[self.unit]
        return (self.depth - extra) // (3 * per_unit)


class _ZeroPadShortcut(nn.Module):
    """Option A: subsample by the stride and append zero channels (no parameters)."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra_channels

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class _Unit(nn.Module):
    """Shared by the three unit kinds: the shortcut, dropout, and stochastic depth."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: Shortcut, dropout: float, survival: float):
        super().__init__()
        self.dropout = dropout
        self.survival = survival
        self.projects = shortcut == "B" and (stride != 1 or cin != cout)
        self.zero_pad = shortcut == "A" and (stride != 1 or cin != cout)
        if self.zero_pad:
            if cout < cin:
                raise ConfigError("option A shortcuts only widen; use shortcut B")
            self.shortcut = _ZeroPadShortcut(stride, cout - cin)

    def _preact_identity(self, x: Tensor, pre: Tensor) -> Tensor:
        """The shortcut of a pre-activation unit: where the shape changes, the projection reads
        the pre-activated input (He et al. 2016b); zero padding and identity read ``x``."""
        return self.shortcut(pre) if self.projects else self.shortcut(x) if self.zero_pad else x

    def _drop(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x

    def _skipped(self) -> bool:
        """Huang et al.: in training the whole unit is dropped for the mini-batch with 1 - p_l."""
        return self.training and self.survival < 1.0 and torch.rand(()).item() >= self.survival

    def _scale(self, branch: Tensor) -> Tensor:
        """At test time the branch is weighted by its survival probability."""
        return branch if self.training or self.survival == 1.0 else branch * self.survival


class BasicUnit(_Unit):
    """He et al. 2016a: conv3x3-BN-ReLU-[dropout]-conv3x3-BN, + shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: Shortcut = "A", dropout: float = 0.0,
                 survival: float = 1.0) -> None:  # fmt: skip
        super().__init__(cin, cout, stride, shortcut, dropout, survival)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        if self.projects:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = self.shortcut(x) if self.projects or self.zero_pad else x
        if self._skipped():
            return F.relu(identity)
        out = self._drop(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return F.relu(identity + self._scale(out))


class PreActBottleneckUnit(_Unit):
    """He et al. 2016b: BN-ReLU-1x1 (m) -BN-ReLU-3x3 (m, stride) -[dropout]-BN-ReLU-1x1 (4m), + shortcut."""

    expansion = 4

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: Shortcut = "B", dropout: float = 0.0,
                 survival: float = 1.0) -> None:  # fmt: skip
        super().__init__(cin, cout, stride, shortcut, dropout, survival)
        inner = cout // self.expansion
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, inner, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv2 = _conv3x3(inner, inner, stride)
        self.bn3 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, cout, 1, bias=False)
        if self.projects:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        identity = self._preact_identity(x, pre)
        if self._skipped():
            return identity
        out = self.conv1(pre)
        out = self._drop(self.conv2(F.relu(self.bn2(out))))
        out = self.conv3(F.relu(self.bn3(out)))
        return identity + self._scale(out)


class WideUnit(_Unit):
    """Zagoruyko & Komodakis: BN-ReLU-3x3 (stride) -BN-ReLU-[dropout]-3x3, + shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1, shortcut: Shortcut = "B", dropout: float = 0.0,
                 survival: float = 1.0) -> None:  # fmt: skip
        super().__init__(cin, cout, stride, shortcut, dropout, survival)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        if self.projects:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = F.relu(self.bn1(x))
        identity = self._preact_identity(x, pre)
        if self._skipped():
            return identity
        out = self._drop(F.relu(self.bn2(self.conv1(pre))))
        return identity + self._scale(self.conv2(out))


_UNIT_CLASS = {"basic": BasicUnit, "preact_bottleneck": PreActBottleneckUnit, "wide": WideUnit}


def stage_widths(config: CifarResNetConfig) -> tuple[int, int, int]:
    """Output maps of the three stages."""
    k = config.widen_factor
    if config.unit == "preact_bottleneck":
        return (64 * k, 128 * k, 256 * k)
    return (16 * k, 32 * k, 64 * k)


class CifarResNet(nn.Module):
    """A CIFAR ResNet built from a :class:`CifarResNetConfig`, with the model surface the
    engine and the analysis use (as :class:`~densenets.models.densenet.DenseNet`):
    ``forward_features``, ``forward_head``, ``forward``, ``forward_blocks``,
    ``reset_classifier``, ``num_features``, ``feature_info``, ``feature_map_layer`` and ``config``."""

    def __init__(self, config: CifarResNetConfig) -> None:
        super().__init__()
        self.config = c = config
        self.post_activation = c.unit == "basic"
        self.conv1 = _conv3x3(c.in_channels, 16)
        if self.post_activation:
            self.bn1 = nn.BatchNorm2d(16)
        unit_class = _UNIT_CLASS[c.unit]
        n = c.units_per_stage
        total = 3 * n
        channels = 16
        self.feature_info: list[dict] = []
        for s, width in enumerate(stage_widths(c)):
            stage = nn.Sequential()
            for i in range(n):
                index = s * n + i + 1  # 1..L, for the linear survival schedule
                survival = 1.0 - index / total * c.stochastic_depth
                stride = 2 if s > 0 and i == 0 else 1
                stage.add_module(str(i), unit_class(channels, width, stride, c.shortcut, c.dropout, survival))
                channels = width
            self.add_module(f"layer{s + 1}", stage)
            self.feature_info.append(
                {
                    "module": f"layer{s + 1}",
                    "in_chs": 16 if s == 0 else stage_widths(c)[s - 1],
                    "num_chs": width,
                    "reduction": 2**s,
                    "num_layers": n,
                }  # fmt: skip
            )
        if not self.post_activation:
            self.norm = nn.BatchNorm2d(channels)  # pre-activation nets end with BN-ReLU
            self.final_relu = nn.ReLU()  # a module, so the final map has a hook point (Grad-CAM)
        # The module whose output is forward_features(x): a basic unit ends with its own ReLU.
        self.feature_map_layer = "layer3" if self.post_activation else "final_relu"
        self.num_features = channels
        self.fc: nn.Module = self._make_classifier(c.num_classes)
        self._init_weights(c.init)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return make_classifier(self.num_features, num_classes)

    def _init_weights(self, scheme: str) -> None:
        init_weights(self, scheme)

    def _stem(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return F.relu(self.bn1(x)) if self.post_activation else x

    def forward_blocks(self, x: Tensor) -> list[Tensor]:
        """Each stage's output; shapes and strides in ``feature_info``."""
        outs = []
        x = self._stem(x)
        for s in range(1, 4):
            x = getattr(self, f"layer{s}")(x)
            outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, num_features, H/4, W/4), activated."""
        x = self.forward_blocks(x)[-1]
        return x if self.post_activation else self.final_relu(self.norm(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one (0 removes it)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.fc = self._make_classifier(num_classes)
        self.config = replace(self.config, num_classes=num_classes)

    def set_memory_efficient(self, enabled: bool = True) -> None:
        """Only DenseNets have a memory-efficient mode; switching it off is a no-op here."""
        if enabled:
            raise ConfigError(NO_MEMORY_EFFICIENT)


# ---------------------------------------------------------------------------------------
# Variants: Table 2's baselines (10 classes by default)
# ---------------------------------------------------------------------------------------

VARIANTS: dict[str, CifarResNetConfig] = {
    "resnet110": CifarResNetConfig("basic", 110),
    "resnet1202": CifarResNetConfig("basic", 1202),
    "resnet110_sd": CifarResNetConfig("basic", 110, stochastic_depth=0.5),
    "resnet1202_sd": CifarResNetConfig("basic", 1202, stochastic_depth=0.5),
    "preact_resnet164": CifarResNetConfig("preact_bottleneck", 164, shortcut="B"),
    "preact_resnet1001": CifarResNetConfig("preact_bottleneck", 1001, shortcut="B"),
    "wrn16_8": CifarResNetConfig("wide", 16, widen_factor=8, shortcut="B"),
    "wrn28_10": CifarResNetConfig("wide", 28, widen_factor=10, shortcut="B"),
    # Table 2's "with Dropout, 16 layers, 2.7M" SVHN row: WRN-16-4, dropout 0.4 on SVHN.
    "wrn16_4_dropout": CifarResNetConfig("wide", 16, widen_factor=4, shortcut="B", dropout=0.4),
}
