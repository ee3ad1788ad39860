"""``create_model``: a named variant, a saved model, or named weights, as one call."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

from torch import nn

from ..errors import ConfigError, reject_unknown_fields
from .channels import adapt_state_channels
from .densenet import DenseNet
from .features import DenseNetFeatures
from .hub import fetch_pretrained
from .inflate import DEFAULT_INFLATION, describe_inflation, inflate_state_dict, needs_inflation
from .pretrained import cfg_from_preprocess, default_pretrained_cfg, get_weights_entry
from .registry import build_model, get_config
from .weights import (
    assumed_imagenet_note,
    load_backbone,
    load_file,
    load_weights,
    preprocessing_record,
    read_file,
    recorded_preprocessing,
    state_dict_from,
)

_SAVED_MODEL_SUFFIXES = (".json", ".safetensors")


def create_model(
    name: str,
    pretrained: bool | str = False,
    weights: str | Path | None = None,
    *,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    memory_efficient: bool = False,
    inflate: str | None = None,
    **overrides: object,
) -> nn.Module:
    """Build a DenseNet of the paper, or one of its baselines, by name.

    Args:
        name: A registered variant (``list_models()``), a CIFAR pattern name such as
            ``"densenet_bc40_k12"``, or an exported ``model.json`` (its ``.safetensors``
            beside it; its weights are kept and overrides that would change a weight's
            shape are refused).
        pretrained: ``True`` loads the variant's default named weights, a string picks them
            by tag (``"cifar10"``; see ``list_pretrained``). With another ``num_classes`` the
            classifier is new and everything else pretrained.
        weights: A weights file instead: one of our checkpoints (``pretrained_cfg`` then
            carries its run's mean, std, sizes and class names) or torchvision's
            ``densenet121-*.pth`` / ``resnet50-*.pth``.
        features_only: Return a ``DenseNetFeatures`` wrapper giving the maps picked by
            ``out_indices`` instead of the classifier's output (DenseNets only).
        out_indices: With ``features_only``: 0 is the stem, i is dense block i (default all).
        memory_efficient: Recompute concatenation, BatchNorm and ReLU in the backward pass
            (``model.set_memory_efficient``); DenseNets only.
        inflate: With ``spatial_dims=3`` and 2-D weights (``pretrained`` or ``weights``):
            ``"mean"`` (the default: it fine-tuned better, docs/volumes.md) repeats each 2-D kernel
            over depth divided by the depth (I3D), ``"center"`` puts it in the middle depth slice
            (a depth-constant volume then gives the 2-D output); the note in
            ``model.pretrained_cfg["notes"]`` says which. A MONAI DenseNet's state dict loads
            as it is.
        **overrides: Fields of the model's config, e.g. ``num_classes=100``,
            ``in_channels=1`` (with weights of another channel count the stem is adapted as
            timm's ``in_chans`` does: one channel sums the RGB filters), ``dropout=0.2``.

    Returns:
        The model, a plain ``nn.Module`` with ``pretrained_cfg`` describing its input.

    Raises:
        ConfigError: An unknown name or field, both ``pretrained`` and ``weights``, or a
            setting the network cannot take (it names the setting).
        CheckpointError: A weights file that is missing, corrupt or of another architecture.

    Example:
        >>> model = create_model("densenet_bc100_k12", num_classes=100)
        >>> sum(p.numel() for p in model.parameters())
        800032
    """
    if pretrained and weights is not None:
        raise ConfigError("give either pretrained= (named weights) or weights= (a file), not both")
    if isinstance(name, (str, Path)) and str(name).endswith(_SAVED_MODEL_SUFFIXES):
        if pretrained:
            raise ConfigError(f"{name} is a saved model with its own weights; drop pretrained=")
        model = _saved_model(Path(name), overrides)
    else:
        model = build_model(get_config(name, **overrides))
        if pretrained:
            _load_named(model, name, pretrained, inflate)
        elif weights is not None:
            _load_file(model, Path(weights), inflate)
        elif inflate is not None:
            raise ConfigError("inflate= needs 2-D weights to inflate: pretrained=TAG or weights=FILE")
    model.set_memory_efficient(memory_efficient)
    if features_only:
        if not isinstance(model, DenseNet):
            raise ConfigError(f"features_only is for DenseNets; {name} is a {model.config.family} network")
        return DenseNetFeatures(model, out_indices)
    if out_indices is not None:
        raise ConfigError("out_indices needs features_only=True")
    return model


def _load_named(model: DenseNet, name: str, tag: bool | str, inflate: str | None) -> None:
    entry = get_weights_entry(name, tag)
    # another in_channels: the stem adapted as timm's in_chans does, the normalisation with it
    state, mean, std, _ = adapt_state_channels(fetch_pretrained(entry), model, entry.mean, entry.std)
    state, notes = _inflated(state, model, inflate, entry.name)
    new_head = load_backbone(model, state, entry.file_name)
    spatial = entry.input_size[1:]
    if model.config.spatial_dims == 3:  # a cube of the 2-D size
        spatial = (spatial[0], *spatial)
    model.pretrained_cfg = {
        **entry.pretrained_cfg(), "mean": tuple(mean), "std": tuple(std),
        "input_size": (model.config.in_channels, *spatial), "num_classes": model.config.num_classes,
    }  # fmt: skip
    if new_head:  # the entry's class names are not this classifier's
        model.pretrained_cfg["class_names"] = None
    if notes:
        model.pretrained_cfg["notes"] = notes


def _load_file(model: nn.Module, path: Path, inflate: str | None = None) -> None:
    """Weights from a file; one of our checkpoints also gives the preprocessing its run recorded."""
    data = read_file(path)
    state = state_dict_from(data)
    if not isinstance(data.get("config"), dict):  # a bare state dict: no preprocessing recorded
        state, notes = _inflated(adapt_state_channels(state, model)[0], model, inflate, path)
        load_weights(model, state, path)
        if notes:
            model.pretrained_cfg = {**model.pretrained_cfg, "notes": notes}
        if model.config.stem != "imagenet":  # ImageNet-stem files are torchvision's: ImageNet's is theirs
            cfg = getattr(model, "pretrained_cfg", None) or default_pretrained_cfg(model.config)
            warnings.warn(
                f"{path.name} records no normalisation: pretrained_cfg keeps the CIFAR stem's default "
                f"({cfg['input_size'][-1]} px, mean {list(cfg['mean'])}, std {list(cfg['std'])}); set "
                "model.pretrained_cfg to the weights' own if they were trained otherwise",
                stacklevel=3,
            )
        return
    if preprocessing_record(data) is None:
        warnings.warn(assumed_imagenet_note(path), stacklevel=3)
    preprocess, class_names = recorded_preprocessing(data)
    state, mean, std, _ = adapt_state_channels(state, model, preprocess["mean"], preprocess["std"])
    state, notes = _inflated(state, model, inflate, path)
    load_weights(model, state, path)
    preprocess = {**preprocess, "mean": mean, "std": std, "channels": model.config.in_channels}
    model.pretrained_cfg = cfg_from_preprocess(preprocess, model.config.num_classes, class_names)
    if notes:
        model.pretrained_cfg["notes"] = notes


def _inflated(state: dict, model: nn.Module, inflate: str | None, source) -> tuple[dict, list[str]]:
    """``state`` inflated to ``model``'s 3-D kernels when it holds 2-D ones, and the note saying so."""
    if not needs_inflation(state, model):
        if inflate is not None:
            raise ConfigError(
                f"inflate={inflate!r}: {source} holds no 2-D kernels for this "
                f"{getattr(model.config, 'spatial_dims', 2)}-D model; drop inflate="
            )
        return state, []
    mode = inflate or DEFAULT_INFLATION
    return inflate_state_dict(state, model, mode), [describe_inflation(mode, chosen=inflate is not None)]


def _saved_model(path: Path, overrides: dict) -> nn.Module:
    loaded = load_file(path)
    model = loaded.model.train()
    if not overrides:
        return model
    reject_unknown_fields(overrides, type(model.config), "model setting")
    rebuilt = build_model(replace(model.config, **overrides))
    own, saved = rebuilt.state_dict(), model.state_dict()
    if own.keys() != saved.keys() or any(own[k].shape != saved[k].shape for k in own):
        changed = ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))
        raise ConfigError(
            f"{path}: {changed} would change the shapes of its weights; load it without them "
            "(model.reset_classifier(n) gives a new classifier)"
        )
    rebuilt.load_state_dict(saved)
    rebuilt.pretrained_cfg = dict(model.pretrained_cfg)
    return rebuilt.train()
