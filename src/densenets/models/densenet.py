"""DenseNet (Huang et al., CVPR 2017): blocks, the network, and the named variants.

Submodule names follow torchvision (``features.denseblock1.denselayer1.norm1``,
``features.transition1.conv``, ``features.norm5``, ``classifier``) so that its
checkpoints load unchanged into the ImageNet variants.

``spatial_dims`` (MONAI's name) picks 1-D signals, 2-D images (the default) or 3-D volumes:
the same blocks, built from the ``conv``/``norm``/``pool`` factories below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .configs import ArchitectureConfig, check_choice, check_fraction, check_num_classes, check_positive_int
from .layers import init_weights, make_classifier
from .pretrained import default_pretrained_cfg
from .recompute import dense_layer_recomputed, first_conv_recomputed, norm_relu_recomputed

Stem = Literal["cifar", "imagenet"]
DropoutPlacement = Literal["paper", "torchvision"]
InitScheme = Literal["fan_out", "fan_in"]

_STEMS = ("cifar", "imagenet")
_PLACEMENTS = ("paper", "torchvision")
_INITS = ("fan_out", "fan_in")
SPATIAL_DIMS = (1, 2, 3)
# set_memory_efficient's levels: False (off), True (concat-BN-ReLU recomputed, Pleiss et al.),
# "full" (each dense layer but its 3x3 conv, the transitions' and the stem's BN-ReLU).
MemoryLevel = bool | Literal["full"]
MEMORY_LEVELS = (False, True, "full")


def check_memory_level(level: object) -> MemoryLevel:
    """``level`` if it is one of :data:`MEMORY_LEVELS` (1 and 0 are not booleans here)."""
    if isinstance(level, bool) or level == "full":
        return level
    raise ConfigError(f"memory_efficient must be false, true or 'full', got {level!r}")


def conv(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d``."""
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial_dims - 1]


def norm(spatial_dims: int) -> type[nn.Module]:
    """``nn.BatchNorm1d`` / ``2d`` / ``3d``."""
    return (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims - 1]


def avg_pool(spatial_dims: int) -> type[nn.Module]:
    """``nn.AvgPool1d`` / ``2d`` / ``3d``."""
    return (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)[spatial_dims - 1]


def max_pool(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool1d`` / ``2d`` / ``3d``."""
    return (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)[spatial_dims - 1]


# the global average pool of forward_head, per spatial_dims (2-D: what it always was)
_GLOBAL_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


@dataclass(frozen=True)
class DenseNetConfig(ArchitectureConfig):
    """Everything the paper varies, as one immutable record.

    Attributes:
        growth_rate: k, the maps each dense layer adds.
        block_sizes: Dense layers per block (3 blocks for CIFAR/SVHN, 4 for ImageNet).
        stem: ``"cifar"``: one 3x3 conv; ``"imagenet"``: 7x7/2 conv, BN, ReLU, 3x3/2 max pool.
        init_channels: Maps leaving the stem.
        bottleneck: 1x1 bottleneck convolutions of ``bn_size * k`` maps (DenseNet-B).
        bn_size: The bottleneck's width in units of k (4 in the paper).
        compression: Transition compression theta (0.5 for -C and -BC, 1 for none).
        dropout: Dropout rate (0.2 on CIFAR/SVHN without augmentation in the paper).
        dropout_placement: ``"paper"`` drops after every conv but the stem (the authors'
            Lua code); ``"torchvision"`` only after each layer's last conv.
        in_channels: Input channels (1 for grey images).
        num_classes: Classifier outputs.
        init: ``"fan_out"``, the authors' He-normal init (std = sqrt(2 / (k*k*out_channels)));
            ``"fan_in"``, torchvision's.
        spatial_dims: 1, 2 or 3: inputs (N, C, L), (N, C, H, W) or (N, C, D, H, W).
    """

    family: ClassVar[str] = "densenet"

    growth_rate: int = 32
    block_sizes: tuple[int, ...] = (6, 12, 24, 16)
    stem: Stem = "imagenet"
    init_channels: int = 64
    bottleneck: bool = True
    bn_size: int = 4
    compression: float = 0.5
    dropout: float = 0.0
    dropout_placement: DropoutPlacement = "paper"
    in_channels: int = 3
    num_classes: int = 1000
    init: InitScheme = "fan_out"
    spatial_dims: int = 2

    def __post_init__(self) -> None:
        # Tuples survive JSON round trips as lists; normalise so configs compare equal.
        object.__setattr__(self, "block_sizes", tuple(int(b) for b in self.block_sizes))
        for name in ("growth_rate", "init_channels", "bn_size", "in_channels"):
            check_positive_int(name, getattr(self, name))
        check_num_classes(self.num_classes)
        if not self.block_sizes or any(b < 1 for b in self.block_sizes):
            raise ConfigError(f"block_sizes must be a non-empty tuple of positive ints, got {self.block_sizes!r}")
        check_fraction("compression", self.compression, zero=False, one=True, note=" (the paper uses 0.5)")
        check_fraction("dropout", self.dropout, zero=True, one=False)
        check_choice("stem", self.stem, _STEMS)
        check_choice("dropout_placement", self.dropout_placement, _PLACEMENTS)
        check_choice("init", self.init, _INITS)
        if self.spatial_dims not in SPATIAL_DIMS or isinstance(self.spatial_dims, bool):
            raise ConfigError(f"spatial_dims must be 1, 2 or 3, got {self.spatial_dims!r}")
        if not isinstance(self.bottleneck, bool):
            raise ConfigError(f"bottleneck must be true or false, got {self.bottleneck!r}")


def transition_channels(in_channels: int, compression: float) -> int:
    """Maps leaving a transition: floor(theta * m), as in the paper."""
    return int(math.floor(compression * in_channels))


class DenseLayer(nn.Module):
    """One layer H_l: [BN-ReLU-1x1 conv (bn_size*k) -] BN-ReLU-3x3 conv (k maps).

    Takes the list of feature maps produced so far in the block and returns its k new maps.
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        bn_size: int = 4,
        bottleneck: bool = True,
        dropout: float = 0.0,
        dropout_placement: DropoutPlacement = "paper",
        memory_efficient: MemoryLevel = False,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        Conv, Norm = conv(spatial_dims), norm(spatial_dims)
        self.bottleneck = bottleneck
        self.norm1 = Norm(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        if bottleneck:
            inner = bn_size * growth_rate
            self.conv1 = Conv(in_channels, inner, kernel_size=1, bias=False)
            self.norm2 = Norm(inner)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = Conv(inner, growth_rate, kernel_size=3, padding=1, bias=False)
        else:
            self.conv1 = Conv(in_channels, growth_rate, kernel_size=3, padding=1, bias=False)
        self.dropout = float(dropout)
        # "paper": after the 1x1 and the 3x3; "torchvision": after the last conv only.
        self.dropout_after_conv1 = bottleneck and dropout_placement == "paper"
        self.memory_efficient = memory_efficient

    def forward(self, features: list[Tensor]) -> Tensor:
        """(N, C, H, W) concatenated-so-far maps -> the k new maps."""
        if self.memory_efficient and self.training and any(f.requires_grad for f in features):
            dropout_between = self.dropout > 0 and self.dropout_after_conv1  # its mask cannot be rebuilt
            if self.memory_efficient == "full" and self.bottleneck and not dropout_between:
                # Keep only the inputs; all but conv2 is rebuilt in backward (conv1 runs twice).
                modules = (self.norm1, self.relu1, self.conv1, self.norm2, self.relu2, self.conv2)
                return self._drop(dense_layer_recomputed(features, *modules))
            # Keep only the inputs; concat -> BN -> ReLU is recomputed in backward, conv1 is not.
            out = first_conv_recomputed(features, self.norm1, self.relu1, self.conv1)
        else:
            x = torch.cat(features, 1) if len(features) > 1 else features[0]
            out = self.conv1(self.relu1(self.norm1(x)))
        if not self.bottleneck:
            return self._drop(out)
        if self.dropout_after_conv1:
            out = self._drop(out)
        out = self.conv2(self.relu2(self.norm2(out)))
        return self._drop(out)

    def _drop(self, x: Tensor) -> Tensor:
        if self.dropout > 0:
            return F.dropout(x, self.dropout, self.training)
        return x


class DenseBlock(nn.ModuleDict):
    """`num_layers` dense layers; each reads the concatenation of all earlier outputs.

    Plain modules, as torchvision's: hooks, parametrizations, pickling, fx and
    ``torch.export`` see every layer. The fast paths live outside the module
    (``optimize_for_inference``).
    """

    def __init__(self, num_layers: int, in_channels: int, growth_rate: int, **layer_kwargs) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(in_channels + i * growth_rate, growth_rate, **layer_kwargs)
            self.add_module(f"denselayer{i + 1}", layer)
        self.in_channels = in_channels
        self.growth_rate = growth_rate
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C + layers * k, H, W): the input with every layer's maps appended."""
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN -> ReLU -> 1x1 conv (floor(theta*m) maps) [-> dropout] -> 2x2 average pool.

    Without dropout the pool runs before the conv: both are linear, so the result is the
    same, and the conv then works on a quarter of the pixels.
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, spatial_dims: int = 2) -> None:
        super().__init__()
        self.norm = norm(spatial_dims)(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = conv(spatial_dims)(in_channels, out_channels, kernel_size=1, bias=False)
        if dropout > 0:
            self.drop = nn.Dropout(dropout)
        self.pool = avg_pool(spatial_dims)(kernel_size=2, stride=2)
        self.memory_efficient: MemoryLevel = False  # "full": BN-ReLU rebuilt in backward from the input

    @property
    def pools_first(self) -> bool:
        """Whether forward pools before the conv (no dropout): FLOP counts must undo this."""
        return not hasattr(self, "drop")  # dropout does not commute with pooling

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C * compression, H / 2, W / 2)."""
        if getattr(self, "memory_efficient", False) == "full" and self.training and x.requires_grad:
            return norm_relu_recomputed(x, self.norm, self.relu, self._after_activation)
        return self._after_activation(self.relu(self.norm(x)))

    def _after_activation(self, x: Tensor) -> Tensor:
        if not self.pools_first:
            return self.pool(self.drop(self.conv(x)))
        return self.conv(self.pool(x))


class DenseNet(nn.Module):
    """A DenseNet built from a :class:`DenseNetConfig`.

    Surface shared by training, analysis, export and benchmarks: ``forward_features``,
    ``forward_head``, ``forward``, ``forward_blocks``, ``reset_classifier``,
    ``num_features`` and ``feature_info``. ``pretrained_cfg`` (timm's keys) describes the
    input the weights expect. ``memory_efficient`` recomputes concat-BN-ReLU (not the conv) in the
    backward pass (a runtime switch, also ``set_memory_efficient``), not part of the architecture.
    ``feature_map_layer`` names the module whose output is ``forward_features(x)`` (for CAM).

    Args:
        config: The architecture.
        memory_efficient: Recompute concatenation, BatchNorm and ReLU in the backward pass.
    """

    feature_map_layer = "features.relu5"

    def __init__(self, config: DenseNetConfig, memory_efficient: bool = False) -> None:
        super().__init__()
        check_memory_level(memory_efficient)
        self.config = config
        self.pretrained_cfg: dict = default_pretrained_cfg(config)
        c = config
        Conv, Norm, dims = conv(c.spatial_dims), norm(c.spatial_dims), c.spatial_dims
        self.features = nn.Sequential()
        if c.stem == "imagenet":
            self.features.add_module("conv0", Conv(c.in_channels, c.init_channels, 7, 2, 3, bias=False))
            self.features.add_module("norm0", Norm(c.init_channels))
            self.features.add_module("relu0", nn.ReLU(inplace=True))
            self.features.add_module("pool0", max_pool(dims)(kernel_size=3, stride=2, padding=1))
            reduction = 4
        else:
            self.features.add_module("conv0", Conv(c.in_channels, c.init_channels, 3, 1, 1, bias=False))
            reduction = 1

        channels = c.init_channels
        self.feature_info: list[dict] = []
        for i, num_layers in enumerate(c.block_sizes, start=1):
            block = DenseBlock(
                num_layers,
                channels,
                c.growth_rate,
                bn_size=c.bn_size,
                bottleneck=c.bottleneck,
                dropout=c.dropout,
                dropout_placement=c.dropout_placement,
                memory_efficient=memory_efficient,
                spatial_dims=dims,
            )
            self.features.add_module(f"denseblock{i}", block)
            self.feature_info.append(
                {
                    "module": f"features.denseblock{i}",
                    "in_chs": channels,
                    "num_chs": block.out_channels,
                    "reduction": reduction,
                    "num_layers": num_layers,
                }
            )
            channels = block.out_channels
            if i < len(c.block_sizes):
                out = transition_channels(channels, c.compression)
                drop = c.dropout if c.dropout_placement == "paper" else 0.0
                self.features.add_module(f"transition{i}", Transition(channels, out, drop, dims))
                channels = out
                reduction *= 2
        # torchvision's name for the final BN, whatever the number of blocks.
        self.features.add_module("norm5", Norm(channels))
        # A module, not torchvision's F.relu(..., inplace=True) in forward: ``features[-1]`` is the
        # post-ReLU map, a hook point that means one thing (Grad-CAM). No parameters, so state
        # dicts are unchanged.
        self.features.add_module("relu5", nn.ReLU())
        self.num_features = channels
        self.classifier: nn.Module = self._make_classifier(c.num_classes)
        self._init_weights(c.init)
        self.set_memory_efficient(memory_efficient)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return make_classifier(self.num_features, num_classes)

    def _init_weights(self, scheme: InitScheme) -> None:
        init_weights(self, scheme)

    def forward_features(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, num_features, h, w), after the final BN and ReLU (``features.relu5``).

        (N, C_in, D, H, W) -> (N, num_features, d, h, w) in 3-D, (N, C_in, L) -> (N, num_features, l) in 1-D.
        """
        f = self.features
        if not (getattr(self, "_recompute_stem", False) and self.training):
            return f(x)
        x = f.conv0(x)  # "full" memory level, ImageNet stem: its BN-ReLU is rebuilt in backward
        x = norm_relu_recomputed(x, f.norm0, f.relu0, f.pool0) if x.requires_grad else f.pool0(f.relu0(f.norm0(x)))
        for name, module in f.named_children():
            if name not in ("conv0", "norm0", "relu0", "pool0"):
                x = module(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pool, then the classifier unless ``pre_logits``."""
        x = torch.flatten(_GLOBAL_POOL[self.config.spatial_dims](x, 1), 1)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images -> (N, num_classes) logits."""
        return self.forward_head(self.forward_features(x))

    def forward_blocks(self, x: Tensor) -> list[Tensor]:
        """Each dense block's output (before its transition), for dense-prediction backbones.

        Shapes and strides are listed in ``feature_info``.
        """
        outs = []
        for name, module in self.features.named_children():
            if name == "norm5":
                break
            x = module(x)
            if name.startswith("denseblock"):
                outs.append(x)
        return outs

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier with a fresh one (0 removes it)."""
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.classifier = self._make_classifier(num_classes)
        self.config = replace(self.config, num_classes=num_classes)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def set_memory_efficient(self, enabled: MemoryLevel = True) -> None:
        """Switch recomputation in the backward pass on (``True``, ``"full"``) or off (``False``).

        ``True`` recomputes each dense layer's concat-BN-ReLU (Pleiss et al.; every conv runs
        once). ``"full"`` also rebuilds the rest of the layer but its 3x3 conv (the 1x1 conv runs
        a second time in backward), the transitions' BN-ReLU and the ImageNet stem's BN-ReLU from
        their inputs: for volumes, where the layers' 1x1 outputs dominate. A layer with dropout
        between its two convs (``dropout_placement="paper"``) stays at the ``True`` level. The
        gradients are the same at every level (tested).
        """
        level = check_memory_level(enabled)
        for m in self.modules():
            if isinstance(m, (DenseLayer, Transition)):
                m.memory_efficient = level if isinstance(m, DenseLayer) or level == "full" else False
        self._recompute_stem = level == "full" and self.config.stem == "imagenet"

    @property
    def memory_efficient(self) -> bool:
        """Whether the dense layers recompute their first half in the backward pass."""
        return any(m.memory_efficient for m in self.modules() if isinstance(m, DenseLayer))

    @property
    def memory_level(self) -> MemoryLevel:
        """The level ``set_memory_efficient`` was given: False, True or ``"full"``."""
        return next((m.memory_efficient for m in self.modules() if isinstance(m, DenseLayer)), False)


# ---------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------


def cifar_config(
    depth: int,
    growth_rate: int,
    *,
    bottleneck: bool = False,
    compression: float = 1.0,
    num_classes: int = 10,
    **overrides: object,
) -> DenseNetConfig:
    """The paper's 3-block CIFAR/SVHN network of total depth L and growth rate k.

    Depth counts the stem conv, every conv in the dense layers, the two transition convs
    and the classifier: L = 3n + 4 for plain layers, 6n + 4 with bottlenecks (two convs
    per layer). The stem has 16 maps for plain DenseNet, 2k with bottleneck + compression.

    Args:
        depth: Total depth L (40 and 100 in the paper for DenseNet; 100, 190, 250 for -BC).
        growth_rate: k, the maps each dense layer adds.
        bottleneck: 1x1 bottleneck convolutions (DenseNet-B).
        compression: Transition compression theta (0.5 for DenseNet-C and -BC).
        num_classes: Classifier outputs.
        **overrides: Other ``DenseNetConfig`` fields (``dropout``, ``in_channels``, ...).

    Returns:
        The config; ``DenseNet(config)`` builds it.

    Raises:
        ConfigError: An impossible depth (the error lists valid ones) or growth rate.

    Example:
        >>> cifar_config(100, 12, bottleneck=True, compression=0.5).block_sizes
        (16, 16, 16)
    """
    per_layer = 2 if bottleneck else 1
    step = 3 * per_layer
    if not isinstance(depth, int) or depth < step + 4 or (depth - 4) % step:
        kind = "DenseNet-B/-BC" if bottleneck else "DenseNet"
        valid = ", ".join(str(step * n + 4) for n in range(1, 6))
        raise ConfigError(
            f"depth {depth!r} is impossible for {kind}: (depth - 4) must be a positive multiple of "
            f"{step}, i.e. depth in {{{valid}, ...}} (paper: 40 and 100 plain; 100, 190, 250 for -BC)"
        )
    check_positive_int("growth_rate", growth_rate)
    n = (depth - 4) // step
    stem = 2 * growth_rate if bottleneck and compression < 1 else 16
    settings = dict(
        growth_rate=growth_rate,
        block_sizes=(n, n, n),
        stem="cifar",
        init_channels=stem,
        bottleneck=bottleneck,
        compression=compression,
        num_classes=num_classes,
    )
    settings.update(overrides)
    return DenseNetConfig(**settings)


def imagenet_config(block_sizes: tuple[int, ...], growth_rate: int = 32, init_channels: int = 64) -> DenseNetConfig:
    """The paper's 4-block ImageNet DenseNet-BC (224x224 input, 1000 classes)."""
    return DenseNetConfig(growth_rate=growth_rate, block_sizes=block_sizes, init_channels=init_channels)


VARIANTS: dict[str, DenseNetConfig] = {
    # CIFAR / SVHN (Table 2), 10 classes by default
    "densenet40_k12": cifar_config(40, 12),
    "densenet100_k12": cifar_config(100, 12),
    "densenet100_k24": cifar_config(100, 24),
    "densenet_bc100_k12": cifar_config(100, 12, bottleneck=True, compression=0.5),
    "densenet_bc250_k24": cifar_config(250, 24, bottleneck=True, compression=0.5),
    "densenet_bc190_k40": cifar_config(190, 40, bottleneck=True, compression=0.5),
    # ImageNet (Table 1 / Table 3)
    "densenet121": imagenet_config((6, 12, 24, 16)),
    "densenet169": imagenet_config((6, 12, 32, 32)),
    "densenet201": imagenet_config((6, 12, 48, 32)),
    "densenet264": imagenet_config((6, 12, 64, 48)),
    "densenet161": imagenet_config((6, 12, 36, 24), growth_rate=48, init_channels=96),
}
