"""A small explicit registry: named DenseNet variants -> configs -> models."""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import replace

from ..errors import ConfigError, reject_unknown_fields
from .densenet import VARIANTS, DenseNet, DenseNetConfig, cifar_config

_REGISTRY: dict[str, DenseNetConfig] = {}

# Any 3-block CIFAR network by name: densenet40_k12, densenet_b52_k12, densenet_c40_k12, densenet_bc100_k12.
CIFAR_NAME = re.compile(r"^densenet(?:_(b|c|bc))?(\d+)_k(\d+)$")


class UnknownModelError(ConfigError):
    """Raised for a model name that is neither registered nor a valid CIFAR pattern."""


def register_model(name: str, config: DenseNetConfig) -> None:
    """Add a named variant. Re-using a name is an error."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    if not isinstance(config, DenseNetConfig):
        raise TypeError(f"config must be a DenseNetConfig, got {type(config).__name__}")
    _REGISTRY[name] = config


for _name, _config in VARIANTS.items():
    register_model(_name, _config)


def list_models(pattern: str = "*") -> list[str]:
    """Registered variant names matching a shell-style pattern, e.g. ``"densenet_bc*"``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_config(name: str, **overrides) -> DenseNetConfig:
    """The config of a named variant (or CIFAR pattern name) with fields overridden."""
    config = _REGISTRY.get(name)
    if config is None:
        config = _parse_cifar_name(name)
    if not overrides:
        return config
    reject_unknown_fields(overrides, DenseNetConfig, "model setting")
    return replace(config, **overrides)


def create_model(name: str, weights: str | None = None, **overrides) -> DenseNet:
    """Build a named variant, e.g. ``create_model("densenet_bc100_k12", num_classes=100)``.

    ``name`` may also be an exported ``model.json`` (with its ``.safetensors`` beside it).
    ``weights`` loads a weights file into the new model: one of our checkpoints, or
    torchvision's ``densenet121-*.pth`` (legacy key names accepted). All files are loaded
    safely (no pickled code runs).
    """
    if isinstance(name, str) and name.endswith((".json", ".safetensors")):
        from ..engine.loading import load_model

        model = load_model(name).model.train()
        return model if not overrides else DenseNet(replace(model.config, **overrides))
    model = DenseNet(get_config(name, **overrides))
    if weights is not None:
        from ..engine.checkpoint import load_checkpoint, state_dict_from
        from ..engine.loading import load_weights

        load_weights(model, state_dict_from(load_checkpoint(weights)), weights)
    return model


def _parse_cifar_name(name: str) -> DenseNetConfig:
    match = CIFAR_NAME.match(name) if isinstance(name, str) else None
    if match is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=4, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(list_models())}"
        raise UnknownModelError(
            f"unknown model {name!r}; {hint} (or any CIFAR network named densenet[_b|_c|_bc]<depth>_k<growth>)"
        )
    kind, depth, growth = match.group(1) or "", int(match.group(2)), int(match.group(3))
    return cifar_config(depth, growth, bottleneck="b" in kind, compression=0.5 if "c" in kind else 1.0)
