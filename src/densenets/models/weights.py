"""Reading weights: read a file safely, clean its keys, infer the architecture it holds, and
load it into a model.

Accepted files: our checkpoints (``best.pt``/``last.pt``), a bare state dict such as
torchvision's ``densenet121-a639ec97.pth`` (legacy ``norm.1`` keys included) or
``resnet50-*.pth``, ``{"state_dict": ...}`` files, and an exported ``model.json`` +
``.safetensors`` pair. Every file is read with ``torch.load(weights_only=True)`` or
safetensors: no pickled code runs. Anything wrong raises one :class:`CheckpointError` line.
Named weights are fetched by :mod:`.hub`; which file a run folder means, and loading by
folder or name, is ``engine.loading``; training code writes checkpoints (``engine.checkpoint``).
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from .densenet import VARIANTS, DenseNet, DenseNetConfig
from .pretrained import cfg_from_preprocess, imagenet_categories
from .registry import ModelConfig, build_model, config_from_dict, get_config, list_models, parse_cifar_name
from .resnet_imagenet import TorchvisionResNetConfig

CHECKPOINT_FORMAT = "densenets-checkpoint/1"  # what engine.checkpoint writes
MODEL_FORMAT = "densenets-model/1"  # the model.json beside an exported .safetensors

# DataParallel/DDP ("module.") and torch.compile ("_orig_mod.") wrap the real keys.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Old torchvision/Lua-converted checkpoints: "denselayer1.norm.1.weight" -> "denselayer1.norm1.weight".
_LEGACY_KEY = re.compile(
    r"(denselayer\d+\.(?:norm|relu|conv))\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


# ---------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------


def read_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint or weights file safely; any problem raises one clear :class:`CheckpointError`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    if path.suffix == ".safetensors":
        return {"model": _read_safetensors(path)}
    _check_container(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "global" in str(exc).lower() or "weights only" in str(exc).lower():
            raise CheckpointError(
                f"{path}: refused to load: the file contains pickled Python objects that could run code "
                f"(only tensors and plain containers are accepted). {_unsafe_detail(exc)}"
            ) from exc
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, UnicodeDecodeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({first})") from exc
    except Exception as exc:  # anything else a hostile or damaged file can provoke
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def _check_container(path: Path) -> None:
    """Refuse what is neither a zip file (``torch.save``) nor a pickle (older ``torch.save``,
    ``pickle.dump``), and a zip file whose bytes fail their stored CRC-32: ``torch.load`` does not
    check it, so a damaged weight would load as a different model without a word."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        if head[:1] not in (b"\x80", b"(", b"}", b"]"):  # a pickle's first opcode (protocol 2+, or 0/1)
            raise CheckpointError(f"{path}: not a checkpoint (neither a PyTorch zip file nor a pickle)")
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: truncated or corrupted checkpoint ({first})") from exc
    if damaged is not None:
        raise CheckpointError(f"{path}: corrupted checkpoint ({damaged} does not match its CRC-32 checksum)")


def _unsafe_detail(exc: Exception) -> str:
    for line in str(exc).splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return ""


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file  # optional dependency
    except ImportError as exc:
        raise CheckpointError(f"{path}: reading .safetensors needs `pip install safetensors`") from exc
    try:
        return load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: truncated or corrupted safetensors file ({exc})") from exc


def state_dict_from(data: dict) -> dict[str, Tensor]:
    """The cleaned model weights inside a read file: our checkpoint, a bare state dict, or ``{"state_dict": ...}``.

    A checkpoint of a run that kept an EMA of its weights gives the EMA (what the run reported).
    """
    for key in ("ema", "model", "state_dict", "model_state_dict"):
        if key in data and isinstance(data[key], dict):
            data = data[key]
            break
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError("the file holds no model weights (no tensors found)")
    return clean_state_dict(tensors)


# ---------------------------------------------------------------------------------------
# Cleaning keys
# ---------------------------------------------------------------------------------------


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove ``module.`` and ``_orig_mod.`` prefixes (in any order, repeated)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def convert_legacy_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename legacy ``norm.1`` / ``conv.2``-style dense-layer keys to ``norm1`` / ``conv2``."""
    return {_LEGACY_KEY.sub(r"\1\2.\3", key): value for key, value in state_dict.items()}


# MONAI's DenseNet (monai.networks.nets.DenseNet121/169/201/264, any spatial_dims): torchvision's
# layout but each dense layer's modules sit in a ``layers`` Sequential and the classifier is
# ``class_layers.out``; "features.denseblock1.denselayer1.layers.norm1.weight" -> "...denselayer1.norm1.weight".
_MONAI_LAYER = re.compile(r"(denselayer\d+)\.layers\.")
_OUR_LAYER = re.compile(r"(denseblock\d+\.denselayer\d+)\.")
_MONAI_HEAD, _OUR_HEAD = "class_layers.out.", "classifier."


def convert_monai_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a MONAI DenseNet state dict's keys to ours (a no-op on any other state dict)."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(_MONAI_HEAD):
            key = _OUR_HEAD + key[len(_MONAI_HEAD) :]
        out[_MONAI_LAYER.sub(r"\1.", key)] = value
    return out


def to_monai_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our DenseNet's state dict with MONAI's keys, for ``monai.networks.nets.DenseNet121(...).load_state_dict``.

    The inverse of :func:`convert_monai_keys`; the model must be one MONAI can build (the ImageNet stem,
    ``compression=0.5``, bottlenecks), which the caller's ``load_state_dict`` checks."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(_OUR_HEAD):
            key = _MONAI_HEAD + key[len(_OUR_HEAD) :]
        out[_OUR_LAYER.sub(r"\1.layers.", key)] = value
    return out


def clean_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Everything needed before ``load_state_dict``: prefixes stripped, legacy and MONAI keys renamed."""
    return convert_monai_keys(convert_legacy_keys(strip_wrapper_prefixes(state_dict)))


# ---------------------------------------------------------------------------------------
# The architecture a state dict holds
# ---------------------------------------------------------------------------------------


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
            spatial_dims=conv0.dim() - 2,
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


_NOT_ARCHITECTURE = ("num_classes", "in_channels", "dropout", "init")


def _baseline_name(config: ModelConfig) -> str | None:
    """The registered baseline with this architecture (classes, channels, dropout, init aside)."""
    same = {f.name: getattr(config, f.name) for f in fields(config) if f.name in _NOT_ARCHITECTURE}
    for name in list_models():
        known = get_config(name)
        if type(known) is type(config) and replace(known, **same) == config:
            return name
    return None


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
        candidate = parse_cifar_name(name)
        if candidate is not None and _architecture(candidate) == _architecture(config):
            return name
    return None


def describe(config: ModelConfig) -> str:
    name = guess_name(config)
    if not isinstance(config, DenseNetConfig):
        return f"{name or 'a ' + config.family + ' network'} ({config.num_classes} classes)"
    shape = (
        f"k={config.growth_rate}, blocks {list(config.block_sizes)}, {config.stem} stem, {config.num_classes} classes"
    )
    if config.spatial_dims != 2:
        shape = f"{shape}, {config.spatial_dims}-D"
    return f"{name} ({shape})" if name else f"a DenseNet with {shape}"


# ---------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------


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


def classifier_prefix(model: nn.Module) -> str:
    """The key prefix of a model's classifier: ``classifier.`` (DenseNet) or ``fc.`` (the ResNets)."""
    return "classifier." if isinstance(model, DenseNet) else "fc."


def load_backbone(model: nn.Module, state: dict, source: Path | str, new_head: bool = False) -> bool:
    """Load everything but a classifier for another number of classes, or for other classes
    (``new_head``), which stays the model's own, freshly initialised. Returns True when the
    classifier was replaced."""
    own = model.state_dict()
    head = classifier_prefix(model)
    theirs = state.get(head + "weight")
    other_shape = head + "weight" in own and theirs is not None and theirs.shape != own[head + "weight"].shape
    replaced = theirs is not None and head + "weight" in own and (new_head or other_shape)
    if replaced or (head + "weight" not in own and theirs is not None):
        state = {k: v for k, v in state.items() if not k.startswith(head)}
        state.update({k: v for k, v in own.items() if k.startswith(head)})
        replaced = True
    load_weights(model, state, source)
    return replaced


@dataclass
class LoadedModel:
    model: nn.Module  # DenseNet, CifarResNet or TorchvisionResNet
    preprocess: dict  # rebuilds the test-time transform (data.transforms.eval_transform)
    class_names: list[str]
    source: Path
    name: str | None = None  # registry name, when known
    run_config: dict = field(default_factory=dict)  # the run's config.json content, for our checkpoints
    # False: the names were supplied here (numbers, torchvision's ImageNet list), not recorded by
    # the run that trained the weights, so a data set's own names are not checked against them
    class_names_recorded: bool = True
    # which of the file's weights were loaded, when it holds more than one set (the EMA of a run's weights)
    weights: str = ""
    # what the loader assumed that the file does not say (a bare state dict's normalisation)
    notes: list[str] = field(default_factory=list)


IMAGENET_PREPROCESS = {
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "resize": 256,
    "crop": 224,
    "channels": 3,
}


def ready(loaded: LoadedModel, device: str | torch.device = "cpu") -> LoadedModel:
    """A loaded model on ``device`` in eval mode, its ``pretrained_cfg`` describing its input and outputs."""
    config = loaded.model.config
    loaded.model.pretrained_cfg = cfg_from_preprocess(loaded.preprocess, config.num_classes, loaded.class_names)
    loaded.model.to(device).eval()
    return loaded


def load_file(path: str | Path, model_name: str | None = None, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a weights file for evaluation, prediction, analysis or export (in eval mode).

    ``path`` is one file: our checkpoint, a bare state dict, or an exported ``model.json`` /
    ``.safetensors``. A run folder or a registered name is ``engine.loading.load_model``'s.
    """
    path = Path(path)
    exported = path.suffix in (".json", ".safetensors")
    return ready(_load_exported(path) if exported else _load_torch_file(path, model_name), device)


def _config_from_dict(data: dict, source: Path) -> ModelConfig:
    try:
        return config_from_dict(data)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: its model config is invalid ({exc})") from exc


def _load_torch_file(path: Path, model_name: str | None) -> LoadedModel:
    data = read_file(path)
    config = data.get("config") if isinstance(data.get("config"), dict) else None
    state = state_dict_from(data)
    weights = _ema_note(data, config) if isinstance(data.get("ema"), dict) else ""
    if config and isinstance(config.get("model"), dict):
        model = build_model(_config_from_dict(config["model"], path))
        load_weights(model, state, path)
        preprocess, class_names = recorded_preprocessing(data)
        notes = [] if preprocessing_record(data) else [assumed_imagenet_note(path)]
        recipe_model = config.get("recipe", {}).get("model")
        return LoadedModel(model, preprocess, class_names, path, recipe_model, config, weights=weights, notes=notes)
    # A bare state dict: torchvision's weights or someone else's export.
    inferred = infer_config(state)
    name = model_name or (guess_name(inferred) if inferred else None)
    if name is None:
        raise CheckpointError(f"{path}: holds a state dict of an unknown architecture; pass --model NAME")
    num_classes = inferred.num_classes if inferred else 1000
    # a 1-D or 3-D DenseNet's file (ours or MONAI's) builds the same dimension, with its input channels
    shape = {} if not isinstance(inferred, DenseNetConfig) or inferred.spatial_dims == 2 else {
        "spatial_dims": inferred.spatial_dims, "in_channels": inferred.in_channels,
    }  # fmt: skip
    model = build_model(get_config(name, num_classes=num_classes, **shape))
    load_weights(model, state, path)
    imagenet = model.config.stem == "imagenet"
    classes = imagenet_categories() if imagenet and num_classes == 1000 else [str(i) for i in range(num_classes)]
    preprocess = IMAGENET_PREPROCESS if imagenet else {
        "mean": [0.5] * model.config.in_channels, "std": [0.25] * model.config.in_channels,
        "resize": None, "crop": 32, "channels": model.config.in_channels,
    }  # fmt: skip
    notes = []
    if not imagenet:
        # a bare state dict records no normalisation; ImageNet-stem files are torchvision's, ImageNet's
        notes.append(
            f"{path.name} records no normalisation or class names: assumed {preprocess['crop']}px images, "
            f"mean {preprocess['mean']}, std {preprocess['std']}, classes numbered 0-{num_classes - 1} "
            "(weights trained with another normalisation give wrong answers on these inputs)"
        )
    return LoadedModel(
        model, dict(preprocess), classes, path, name, class_names_recorded=False, weights=weights, notes=notes
    )


def preprocessing_record(data: dict) -> dict | None:
    """The preprocess record a checkpoint of ours (a read file) carries; None for a bare state
    dict or a file from before the record."""
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    info = config.get("data") if isinstance(config.get("data"), dict) else {}
    return dict(info["preprocess"]) if isinstance(info.get("preprocess"), dict) and info["preprocess"] else None


def recorded_preprocessing(data: dict) -> tuple[dict, list[str]]:
    """The preprocess record and class names a checkpoint of ours (a read file) carries;
    ImageNet's preprocessing (:func:`assumed_imagenet_note` says so) and no names for files
    from before the record."""
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    info = config.get("data") if isinstance(config.get("data"), dict) else {}
    return preprocessing_record(data) or dict(IMAGENET_PREPROCESS), list(info.get("class_names") or [])


def assumed_imagenet_note(source: Path) -> str:
    """The note for a file without a preprocess record, read with ImageNet's preprocessing."""
    p = IMAGENET_PREPROCESS
    return (
        f"{source.name} records no preprocessing: assumed ImageNet's ({p['crop']} px centre crop of "
        f"{p['resize']}, mean {p['mean']}, std {p['std']}); wrong answers if its weights were trained otherwise"
    )


def _ema_note(data: dict, config: dict | None) -> str:
    decay = ((config or {}).get("recipe") or {}).get("ema_decay")
    kept = f" (decay {decay:g})" if decay else ""
    return f"the EMA of its weights{kept} over {int(data.get('ema_updates', 0))} steps, as the run reported"


def _load_exported(path: Path) -> LoadedModel:
    meta_path = path.with_suffix(".json")
    weights_path = path.with_suffix(".safetensors")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{meta_path}: no such file (it should sit beside {weights_path.name})") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{meta_path}: not a densenets model description (no 'model' settings)")
    model = build_model(_config_from_dict(meta["model"], meta_path))
    state = state_dict_from(read_file(weights_path))
    load_weights(model, state, weights_path)
    data = meta.get("data") or {}
    recorded = meta.get("preprocess")
    return LoadedModel(
        model, dict(recorded or IMAGENET_PREPROCESS), list(meta.get("class_names") or []), path,
        meta.get("name"), {"recipe": {k: v for k, v in data.items() if v is not None}},
        notes=[] if recorded else [assumed_imagenet_note(meta_path)],
    )  # fmt: skip
