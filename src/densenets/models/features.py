"""Multi-scale feature maps: a wrapper that returns the stem's and each dense block's output.

The idea of timm's ``FeatureListNet``: a backbone for detection or segmentation is the same
network run up to the deepest map asked for, not a branch inside ``DenseNet.forward``.
Index 0 is the stem (after its ReLU, before the ImageNet stem's max-pool), index i the
output of dense block i (before its transition). The modules keep the model's names, so a
classifier's checkpoint loads into it with ``strict=False`` (the head is simply absent).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError
from .densenet import DenseNet


class FeatureInfo(list):
    """One dict per returned map: ``module``, ``num_chs``, ``reduction``, ``index``."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


def feature_points(model: DenseNet) -> list[dict]:
    """Every map the wrapper can return, index 0 (stem) to len(block_sizes)."""
    imagenet = model.config.stem == "imagenet"
    stem = {
        "module": "features.relu0" if imagenet else "features.conv0",
        "num_chs": model.config.init_channels,
        "reduction": 2 if imagenet else 1,
    }
    blocks = [{k: info[k] for k in ("module", "num_chs", "reduction")} for info in model.feature_info]
    return [{**p, "index": i} for i, p in enumerate([stem, *blocks])]


class DenseNetFeatures(nn.Module):
    """``forward(x)`` -> list of the selected maps, shallowest first, each (N, C_i, H / r_i, W / r_i)."""

    def __init__(self, model: DenseNet, out_indices: tuple[int, ...] | None = None) -> None:
        super().__init__()
        points = feature_points(model)
        if out_indices is None:
            out_indices = tuple(range(len(points)))
        indices = sorted({len(points) + i if isinstance(i, int) and i < 0 else i for i in out_indices})
        if not indices or any(not isinstance(i, int) or not 0 <= i < len(points) for i in indices):
            raise ConfigError(
                f"out_indices must pick from 0 (stem) to {len(points) - 1} (last dense block) "
                f"of {len(points) - 1} blocks, got {tuple(out_indices)}"
            )
        self.config = model.config
        self.pretrained_cfg = dict(model.pretrained_cfg)
        self.out_indices = tuple(indices)
        self.feature_info = FeatureInfo(points[i] for i in indices)
        wanted = {points[i]["module"].removeprefix("features.") for i in indices}
        last = points[indices[-1]]["module"].removeprefix("features.")
        # Keep the modules up to the deepest map asked for; drop the rest (norm5, classifier).
        self.features = nn.Sequential()
        self._taps: list[str] = []
        for name, module in model.features.named_children():
            self.features.add_module(name, module)
            if name in wanted:
                self._taps.append(name)
            if name == last:
                break

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for name, module in self.features.named_children():
            x = module(x)
            if name in self._taps:
                outs.append(x)
        return outs
