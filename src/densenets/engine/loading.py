"""Load a trained model from whatever the user points at.

Accepted: a run folder (see :func:`choose_checkpoint`), one of our checkpoints, a bare
state dict such as torchvision's ``densenet121-*.pth`` (legacy ``norm.1`` keys included) or
``resnet50-*.pth``,
or an exported ``model.json`` + ``model.safetensors`` pair. Every file is loaded safely
(``weights_only=True`` or safetensors); a file that does not fit the model is reported with
the missing/unexpected keys and the architecture it seems to hold.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError
from ..models import VARIANTS, DenseNetConfig, TorchvisionResNetConfig, build_model, config_from_dict, get_config
from ..models.registry import CIFAR_NAME, ModelConfig, list_models
from .checkpoint import load_checkpoint, state_dict_from
from .runlog import BEST, CONFIG, LAST

IMAGENET_PREPROCESS = {
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "resize": 256,
    "crop": 224,
    "channels": 3,
}


@dataclass
class LoadedModel:
    model: nn.Module  # DenseNet, CifarResNet or TorchvisionResNet
    preprocess: dict  # rebuilds the test-time transform (data.transforms.eval_transform)
    class_names: list[str]
    source: Path
    name: str | None = None  # registry name, when known
    run_config: dict = field(default_factory=dict)  # the run's config.json content, for our checkpoints


def choose_checkpoint(path: str | Path) -> tuple[Path, str]:
    """The file ``path`` means, and a few words on why.

    A run folder means ``best.pt`` only when the run chose it on a validation split (the
    paper's SVHN protocol); otherwise ``last.pt``, the final epoch the paper reports for
    CIFAR, since a ``best.pt`` chosen on the test set would report an optimistic error.
    """
    path = Path(path)
    if not path.is_dir():
        return path, "the file given"
    best, last = path / BEST, path / LAST
    if best.is_file() and _validation_split(path) > 0:
        return best, "best.pt: the epoch with the lowest validation error"
    if last.is_file():
        note = "; best.pt was chosen on the test set" if best.is_file() else ""
        return last, f"last.pt: the final epoch (this run has no validation split{note})"
    if best.is_file():
        return best, "best.pt (the folder holds no last.pt)"
    raise CheckpointError(f"{path}: a folder without {BEST} or {LAST}")


def _validation_split(run_dir: Path) -> int:
    try:
        config = json.loads((run_dir / CONFIG).read_text())
        return int(config["recipe"]["val_split"] or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def resolve_checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file ``path`` means (see :func:`choose_checkpoint`)."""
    return choose_checkpoint(path)[0]


def load_model(path: str | Path, model_name: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model for evaluation, prediction, analysis or export (in eval mode)."""
    path = resolve_checkpoint_path(path)
    exported = path.suffix in (".json", ".safetensors")
    loaded = _load_exported(path) if exported else _load_torch_file(path, model_name)
    loaded.model.to(device).eval()
    return loaded


def _load_torch_file(path: Path, model_name: str | None) -> LoadedModel:
    data = load_checkpoint(path)
    config = data.get("config") if isinstance(data.get("config"), dict) else None
    state = state_dict_from(data)
    if config and isinstance(config.get("model"), dict):
        try:
            model_config = config_from_dict({**config["model"], "memory_efficient": False})
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: its model config is invalid ({exc})") from exc
        model = build_model(model_config)
        load_weights(model, state, path)
        data_info = config.get("data", {})
        return LoadedModel(
            model,
            dict(data_info.get("preprocess") or IMAGENET_PREPROCESS),
            list(data_info.get("class_names") or []),
            path,
            config.get("recipe", {}).get("model"),
            config,
        )
    # A bare state dict: torchvision's weights or someone else's export.
    inferred = infer_config(state)
    name = model_name or (guess_name(inferred) if inferred else None)
    if name is None:
        raise CheckpointError(f"{path}: holds a state dict of an unknown architecture; pass --model NAME")
    num_classes = inferred.num_classes if inferred else 1000
    model = build_model(get_config(name, num_classes=num_classes))
    load_weights(model, state, path)
    imagenet = model.config.stem == "imagenet"
    classes = imagenet_categories() if imagenet and num_classes == 1000 else [str(i) for i in range(num_classes)]
    preprocess = IMAGENET_PREPROCESS if imagenet else {
        "mean": [0.5] * model.config.in_channels, "std": [0.25] * model.config.in_channels,
        "resize": None, "crop": 32, "channels": model.config.in_channels,
    }  # fmt: skip
    return LoadedModel(model, dict(preprocess), classes, path, name)


def _load_exported(path: Path) -> LoadedModel:
    meta_path = path.with_suffix(".json")
    weights_path = path.with_suffix(".safetensors")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{meta_path}: no such file (it should sit beside {weights_path.name})") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    try:
        model = build_model(config_from_dict(meta["model"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{meta_path}: not a densenets model description ({exc})") from exc
    state = state_dict_from(load_checkpoint(weights_path))
    load_weights(model, state, weights_path)
    data = meta.get("data") or {}
    return LoadedModel(
        model, dict(meta.get("preprocess") or IMAGENET_PREPROCESS), list(meta.get("class_names") or []), path,
        meta.get("name"), {"recipe": {k: v for k, v in data.items() if v is not None}},
    )  # fmt: skip


def load_weights(model: nn.Module, state: dict, source: Path | str) -> None:
    """``load_state_dict(strict=True)`` with a one-line diagnosis when the file does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            k = shapes[0]
            parts.append(
                f"{len(shapes)} keys of another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        inferred = infer_config(state)
        held = describe(inferred) if inferred else "an unrecognised architecture"
        raise CheckpointError(
            f"{source}: weights do not fit {describe(model.config)}: {'; '.join(parts)}. The file seems to hold {held}"
        )
    model.load_state_dict(state, strict=True)


def infer_config(state: dict) -> ModelConfig | None:
    """Read the architecture off a DenseNet or torchvision ResNet state dict; None if it is neither."""
    if "features.conv0.weight" not in state:
        return _infer_torchvision_resnet(state)
    try:
        conv0 = state["features.conv0.weight"]
        blocks = []
        i = 1
        while any(k.startswith(f"features.denseblock{i}.") for k in state):
            n = 0
            while f"features.denseblock{i}.denselayer{n + 1}.norm1.weight" in state:
                n += 1
            blocks.append(n)
            i += 1
        if not blocks or 0 in blocks:
            return None
        first = "features.denseblock1.denselayer1"
        bottleneck = f"{first}.conv2.weight" in state
        last_conv = state[f"{first}.conv2.weight" if bottleneck else f"{first}.conv1.weight"]
        growth = int(last_conv.shape[0])
        bn_size = int(state[f"{first}.conv1.weight"].shape[0]) // growth if bottleneck else 4
        compression = 1.0
        if "features.transition1.conv.weight" in state:
            t = state["features.transition1.conv.weight"]
            compression = round(int(t.shape[0]) / int(t.shape[1]), 4)
        classifier = state.get("classifier.weight")
        return DenseNetConfig(
            growth_rate=growth,
            block_sizes=tuple(blocks),
            stem="imagenet" if "features.norm0.weight" in state else "cifar",
            init_channels=int(conv0.shape[0]),
            bottleneck=bottleneck,
            bn_size=bn_size,
            compression=min(compression, 1.0),
            in_channels=int(conv0.shape[1]),
            num_classes=int(classifier.shape[0]) if classifier is not None else 0,
        )
    except (KeyError, AttributeError, IndexError, ValueError, TypeError, ZeroDivisionError):
        return None


# torchvision's ResNets by (bottleneck units?, units per stage)
_TORCHVISION_RESNETS = {
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
    (True, (3, 4, 23, 3)): "resnet101",
    (True, (3, 8, 36, 3)): "resnet152",
}


def _infer_torchvision_resnet(state: dict) -> TorchvisionResNetConfig | None:
    units = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        units.append(len(indices))
    arch = _TORCHVISION_RESNETS.get(("layer1.0.conv3.weight" in state, tuple(units)))
    if arch is None or "conv1.weight" not in state:
        return None
    fc = state.get("fc.weight")
    return TorchvisionResNetConfig(
        arch, num_classes=int(fc.shape[0]) if fc is not None else 0, in_channels=int(state["conv1.weight"].shape[1])
    )


def _architecture(config: DenseNetConfig) -> tuple:
    c = config
    return (c.growth_rate, c.block_sizes, c.stem, c.init_channels, c.bottleneck, c.bn_size, c.compression)


def _baseline_name(config: ModelConfig) -> str | None:
    """The registered baseline with this architecture (classes, channels, dropout, init aside)."""
    same = {f.name: getattr(config, f.name) for f in fields(config) if f.name in _NOT_ARCHITECTURE}
    for name in list_models():
        known = get_config(name)
        if type(known) is type(config) and replace(known, **same) == config:
            return name
    return None


_NOT_ARCHITECTURE = ("num_classes", "in_channels", "dropout", "init", "memory_efficient")


def guess_name(config: ModelConfig) -> str | None:
    """The registered variant (or CIFAR pattern name) with this architecture, if any."""
    if not isinstance(config, DenseNetConfig):
        return _baseline_name(config)
    for name, known in VARIANTS.items():
        if _architecture(known) == _architecture(config):
            return name
    if config.stem == "cifar" and len(set(config.block_sizes)) == 1 and len(config.block_sizes) == 3:
        per_layer = 2 if config.bottleneck else 1
        depth = 3 * per_layer * config.block_sizes[0] + 4
        kind = ("b" if config.bottleneck else "") + ("c" if config.compression < 1 else "")
        name = f"densenet{'_' + kind if kind else ''}{depth}_k{config.growth_rate}"
        if CIFAR_NAME.match(name) and _architecture(get_config(name)) == _architecture(config):
            return name
    return None


def describe(config: ModelConfig) -> str:
    name = guess_name(config)
    if not isinstance(config, DenseNetConfig):
        return f"{name or 'a ' + config.family + ' network'} ({config.num_classes} classes)"
    shape = (
        f"k={config.growth_rate}, blocks {list(config.block_sizes)}, {config.stem} stem, {config.num_classes} classes"
    )
    return f"{name} ({shape})" if name else f"a DenseNet with {shape}"


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names that torchvision ships (no download)."""
    from torchvision.models import DenseNet121_Weights

    return list(DenseNet121_Weights.IMAGENET1K_V1.meta["categories"])
