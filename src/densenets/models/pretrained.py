"""Named weights and the preprocessing that goes with them (``pretrained_cfg``).

A :class:`PretrainedEntry` is one line of data: where the file lives (a URL fetched into
torch.hub's cache, or a file shipped inside the package), its sha256 prefix, and what the
network expects and was measured at. ``create_model(name, pretrained=True)`` takes the
model's first entry; ``pretrained="cifar10"`` selects one by tag. Our own weights join by
adding an entry (``register_weights``); nothing else changes.

``pretrained_cfg`` uses timm's keys (``mean``, ``std``, ``input_size``, ``interpolation``,
``crop_pct``, ``num_classes``) so code written for timm models reads ours unchanged.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TORCHVISION_CROP_PCT = 224 / 256  # resize the shorter side to 256, centre-crop 224


@dataclass(frozen=True)
class PretrainedEntry:
    """One set of published weights for one registered model name."""

    model: str  # registered model name, e.g. "densenet121"
    tag: str  # e.g. "imagenet", "cifar10"; the first entry of a model is its default
    url: str | None = None  # fetched into $TORCH_HOME/hub/checkpoints/<file name of the URL>
    package_file: str | None = None  # or a file shipped in the package, relative to densenets/weights/
    sha256: str = ""  # prefix of the file's sha256, checked before loading
    num_classes: int = 1000
    categories: str | tuple[str, ...] = "imagenet"  # "imagenet": torchvision's 1000 names; else the names
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bilinear"
    crop_pct: float = TORCHVISION_CROP_PCT
    top1: float | None = None  # as published by the weights' authors, on their test set
    dataset: str = "ImageNet-1k"
    source: str = ""
    data: str | None = None  # our data set name for ``densenets eval NAME`` (e.g. "cifar10"); None: pass --data
    training: str = ""  # how the weights were trained, in a few words (recipe, epochs, machine)

    def __post_init__(self) -> None:
        if (self.url is None) == (self.package_file is None):
            raise ConfigError(f"weights {self.name}: give exactly one of url and package_file")

    @property
    def name(self) -> str:
        """``model.tag``, e.g. ``densenet_bc40_k12.cifar10``."""
        return f"{self.model}.{self.tag}"

    @property
    def file_name(self) -> str:
        """Torchvision's own file names (e.g. ``densenet121-a639ec97.pth``) for the hub cache."""
        return os.path.basename(urlparse(self.url).path) if self.url else Path(self.package_file).name

    def pretrained_cfg(self) -> dict:
        """The model's ``pretrained_cfg`` with these weights (timm's keys and ours)."""
        return {
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "input_size": tuple(self.input_size),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "num_classes": self.num_classes,
            **OUTPUT_DEFAULTS,
            "class_names": self.class_names(),
            "tag": self.tag,
            "source": self.url or f"densenets/weights/{self.package_file}",
        }

    def class_names(self) -> list[str]:
        """The names of the classifier's outputs, in order."""
        return imagenet_categories() if self.categories == "imagenet" else list(self.categories)


_WEIGHTS: dict[str, PretrainedEntry] = {}


def register_weights(entry: PretrainedEntry) -> None:
    """Add a named set of weights.

    Args:
        entry: The weights' registry entry (model, tag, file or URL, sha256, preprocessing).

    Raises:
        ValueError: Its ``model.tag`` name is already registered.
    """
    if entry.name in _WEIGHTS:
        raise ValueError(f"weights {entry.name!r} are already registered")
    _WEIGHTS[entry.name] = entry


def unregister_weights(name: str) -> None:
    """Remove an entry (for tests and for users replacing an entry with their own)."""
    _WEIGHTS.pop(name, None)


def named_weights(text: str) -> PretrainedEntry | None:
    """The entry called ``text`` (``model.tag``, e.g. ``densenet_bc40_k12.cifar10``), if one is."""
    return _WEIGHTS.get(text)


def list_pretrained(pattern: str = "*") -> list[PretrainedEntry]:
    """Named weights whose ``model.tag`` name or model matches a pattern.

    Args:
        pattern: A shell-style pattern, e.g. ``"densenet121*"``.

    Returns:
        The matching registry entries, sorted by name.
    """
    return [e for n, e in sorted(_WEIGHTS.items()) if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(e.model, pattern)]


def get_weights_entry(model: str, tag: bool | str = True) -> PretrainedEntry:
    """The entry for ``model`` (its first one for ``tag=True``, else the one with that tag)."""
    mine = [e for e in _WEIGHTS.values() if e.model == model]
    if not mine:
        have = sorted({e.model for e in _WEIGHTS.values()})
        raise ConfigError(
            f"no pretrained weights for {model!r}; models with weights: {', '.join(have)} "
            "(or pass weights=FILE / --weights FILE)"
        )
    if tag is True:
        return mine[0]
    for entry in mine:
        if entry.tag == tag:
            return entry
    tags = [e.tag for e in mine]
    close = difflib.get_close_matches(str(tag), tags, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ConfigError(f"no {model} weights tagged {tag!r}; {hint}tags: {', '.join(tags)}")


# torchvision's ImageNet weights (its DenseNet*_Weights.IMAGENET1K_V1: URL, preprocessing, published top-1).
for _model, _file, _top1 in (
    ("densenet121", "densenet121-a639ec97.pth", 74.434),
    ("densenet161", "densenet161-8d451a50.pth", 77.138),
    ("densenet169", "densenet169-b2777c0a.pth", 75.600),
    ("densenet201", "densenet201-c1103571.pth", 76.896),
):
    register_weights(
        PretrainedEntry(
            model=_model,
            tag="imagenet",
            url=f"https://download.pytorch.org/models/{_file}",
            sha256=_file.rsplit("-", 1)[1].split(".")[0],
            top1=_top1,
            source="torchvision IMAGENET1K_V1 (ported from the authors' LuaTorch models)",
        )
    )


# Our own weights, shipped in the package (densenets/weights/). The figures are the runs' own,
# measured on the full real test set; docs/reproduction.md has the commands and curves.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# What every set of our CIFAR-10 weights expects and reports on: the classes, C10+'s normalisation, 32 px.
CIFAR10_INPUT = {
    "num_classes": 10, "categories": CIFAR10_CLASSES, "mean": (0.4914, 0.4822, 0.4465), "std": (0.247, 0.2435, 0.2616),
    "input_size": (3, 32, 32), "crop_pct": 1.0, "dataset": "CIFAR-10 (C10+)", "data": "cifar10",
}  # fmt: skip
register_weights(
    PretrainedEntry(
        model="densenet_bc40_k12",
        tag="cifar10",
        package_file="densenet_bc40_k12-cifar10.safetensors",
        sha256="9ab852fe4563f648",
        **CIFAR10_INPUT,
        top1=86.00,  # test error 14.00% on the 10,000 CIFAR-10 test images, final epoch (not selected)
        source="densenets: trained on this project's 2-core CPU in 44 minutes",
        training="recipe cifar compressed to 12 epochs (lr 0.1, /10 at epochs 7 and 10), batch 64, C10+ augmentation",
    )
)

register_weights(
    PretrainedEntry(
        model="densenet_bc46_k12",
        tag="cifar10",
        package_file="densenet_bc46_k12-cifar10.safetensors",
        sha256="737cf9907fd17d17",
        **CIFAR10_INPUT,
        top1=90.54,  # fp32 `densenets eval` of this file, final epoch of the recipe's seed 0 (not selected); the run's
        # own bf16 reading 90.54%, 91.58% with 6-view TTA
        source="densenets: trained on this project's 2-core CPU in 26.4 minutes (docs/fast/fast9-s0)",
        training=(
            "recipe fast (Muon), seed 0: 10 epochs at 16-32 px, batch 128, bf16, linear one-cycle lr 0.3, EMA 0.99"
        ),
    )
)

register_weights(
    PretrainedEntry(
        model="densenet_bc100_k12",
        tag="cifar10",
        package_file="densenet_bc100_k12-cifar10.safetensors",
        sha256="8c53d14cff83c6e2",
        **CIFAR10_INPUT,
        top1=93.01,  # fp32 `densenets eval` of this file, the final epoch of the run (not selected); the run's own
        # bf16 reading 93.02%, 93.45% with 6-view TTA
        source="densenets: trained on this project's 2-core CPU in 135.5 minutes (docs/fast/fast94-s0)",
        training=(
            "recipe fast on the paper's BC-100, seed 0: 14 epochs at 16-32 px, batch 128, bf16, "
            "linear one-cycle lr 0.3, EMA 0.99"
        ),
    )
)


register_weights(
    PretrainedEntry(
        model="densenet_bc64_k16",
        tag="cifar10",
        package_file="densenet_bc64_k16-cifar10.safetensors",
        sha256="eacd5b2b8bb1fe19",
        **CIFAR10_INPUT,
        top1=94.16,  # fp32 `densenets eval` of this file, the final epoch of the run (not selected); the run's own
        # bf16 reading 94.13%, 94.47% with 6-view TTA
        source="densenets: trained on this project's 2-core CPU in 121.4 minutes (docs/fast/fast94c-s0)",
        training=(
            "recipe fast (Muon) on DenseNet-BC (L=64, k=16), seed 0: 20 epochs at 16-32 px, batch 128, bf16, "
            "linear one-cycle lr 0.3, EMA 0.99"
        ),
    )
)


# ---------------------------------------------------------------------------------------
# pretrained_cfg: what a model expects as input
# ---------------------------------------------------------------------------------------


# What a model's outputs mean, beside its input: carried by every pretrained_cfg and by a run's
# preprocess record (absent keys: these defaults, so files written before them still load).
OUTPUT_DEFAULTS = {"class_names": None, "thresholds": None, "multilabel": False}


def default_pretrained_cfg(config) -> dict:
    """The input a freshly built model of ``config`` is meant for (ImageNet stem: ImageNet's).

    ``input_size`` is (C, H, W), or (C, L) / (C, D, H, W) for a 1-D / 3-D DenseNet (96^3 with
    the ImageNet stem, the size of MONAI's 3-D classification tutorial).
    """
    channels = config.in_channels
    dims = getattr(config, "spatial_dims", 2)
    if config.stem == "imagenet":
        mean = IMAGENET_MEAN if channels == 3 else (0.5,) * channels
        std = IMAGENET_STD if channels == 3 else (0.25,) * channels
        size = (channels, *(96 if dims == 3 else 224,) * dims)
        return {
            "mean": mean, "std": std, "input_size": size, "interpolation": "bilinear",
            "crop_pct": TORCHVISION_CROP_PCT, "num_classes": config.num_classes, **OUTPUT_DEFAULTS,
        }  # fmt: skip
    return {
        "mean": (0.5,) * channels, "std": (0.25,) * channels, "input_size": (channels, *(32,) * dims),
        "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": config.num_classes, **OUTPUT_DEFAULTS,
    }  # fmt: skip


def cfg_from_preprocess(preprocess: dict, num_classes: int, class_names: list[str] | None = None) -> dict:
    """A run's ``preprocess`` dict and class names as a ``pretrained_cfg``.

    ``preprocess`` holds mean, std, resize, crop, channels; thresholds and multilabel for
    multi-label runs.
    """
    crop = int(preprocess["crop"])
    resize = preprocess.get("resize")
    thresholds = preprocess.get("thresholds")
    # volumes (data.volumes) record their (D, H, W); images their square crop
    spatial = tuple(int(s) for s in preprocess["volume_size"]) if preprocess.get("volume_size") else (crop, crop)
    return {
        "mean": tuple(preprocess["mean"]),
        "std": tuple(preprocess["std"]),
        "input_size": (int(preprocess.get("channels", 3)), *spatial),
        "interpolation": preprocess.get("interpolation", "bilinear"),
        "crop_pct": crop / resize if resize else 1.0,
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names else None,
        "thresholds": [float(t) for t in thresholds] if thresholds is not None else None,
        "multilabel": bool(preprocess.get("multilabel", False)),
    }


def preprocess_from_cfg(cfg: dict) -> dict:
    """The inverse of :func:`cfg_from_preprocess`: rebuilds the test-time transform's settings."""
    channels, crop = int(cfg["input_size"][0]), int(cfg["input_size"][-1])
    pct = float(cfg.get("crop_pct", 1.0))
    return {
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "resize": round(crop / pct) if pct < 1.0 else None,
        "crop": crop,
        "channels": channels,
        "interpolation": cfg.get("interpolation", "bilinear"),
        "thresholds": cfg.get("thresholds"),
        "multilabel": bool(cfg.get("multilabel", False)),
    }


def data_config(model: nn.Module) -> dict:
    """The input a model expects, as timm's ``resolve_data_config`` gives it.

    Args:
        model: One of our models (its ``pretrained_cfg``; a model without one gets its
            architecture's defaults).

    Returns:
        ``input_size``, ``interpolation``, ``mean``, ``std`` and ``crop_pct``.
    """
    cfg = getattr(model, "pretrained_cfg", None) or default_pretrained_cfg(model.config)
    return {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")}


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names that torchvision ships (no download)."""
    from torchvision.models import DenseNet121_Weights  # torchvision.models is slow to import

    return list(DenseNet121_Weights.IMAGENET1K_V1.meta["categories"])
