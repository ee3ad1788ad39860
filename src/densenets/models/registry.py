"""A small explicit registry: named variants -> configs -> models (``create_model`` is in :mod:`.factory`).

Three families share it: the DenseNets, the CIFAR ResNet baselines (``resnet_cifar``) and
torchvision's ImageNet ResNets (``resnet_imagenet``). A config's type picks its network;
a config stored as a dict names its family (DenseNet configs, older than the others, do not).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import replace

from torch import nn

from ..errors import ConfigError, reject_unknown_fields
from . import resnet_cifar, resnet_imagenet
from .densenet import VARIANTS, DenseNet, DenseNetConfig, cifar_config
from .resnet_cifar import CifarResNet, CifarResNetConfig
from .resnet_imagenet import TorchvisionResNet, TorchvisionResNetConfig

ModelConfig = DenseNetConfig | CifarResNetConfig | TorchvisionResNetConfig
# config type -> network; the family names stored in config dicts
_NETWORKS: dict[type, type[nn.Module]] = {
    DenseNetConfig: DenseNet,
    CifarResNetConfig: CifarResNet,
    TorchvisionResNetConfig: TorchvisionResNet,
}
_FAMILIES: dict[str, type] = {"densenet": DenseNetConfig, **{c.family: c for c in _NETWORKS if c is not DenseNetConfig}}

_REGISTRY: dict[str, ModelConfig] = {}

# Any 3-block CIFAR network by name: densenet40_k12, densenet_b52_k12, densenet_c40_k12, densenet_bc100_k12.
CIFAR_NAME = re.compile(r"^densenet(?:_(b|c|bc))?(\d+)_k(\d+)$")


class UnknownModelError(ConfigError):
    """Raised for a model name that is neither registered nor a valid CIFAR pattern."""


def register_model(name: str, config: ModelConfig) -> None:
    """Add a named variant.

    Args:
        name: The new name; re-using a registered name is an error.
        config: A ``DenseNetConfig`` or a baseline's config.

    Raises:
        ValueError: The name is already registered.
        TypeError: The config is of no known network.
    """
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    if type(config) not in _NETWORKS:
        names = ", ".join(c.__name__ for c in _NETWORKS)
        raise TypeError(f"config must be one of {names}, got {type(config).__name__}")
    _REGISTRY[name] = config


for _table in (VARIANTS, resnet_cifar.VARIANTS, resnet_imagenet.VARIANTS):
    for _name, _config in _table.items():
        register_model(_name, _config)


def build_model(config: ModelConfig) -> nn.Module:
    """The network a config describes (``DenseNet``, ``CifarResNet`` or ``TorchvisionResNet``)."""
    try:
        network = _NETWORKS[type(config)]
    except KeyError:
        raise TypeError(f"not a model config: {type(config).__name__}") from None
    return network(config)


def config_from_dict(data: dict) -> ModelConfig:
    """Inverse of ``config.to_dict()``, for any family (no ``family`` key: a DenseNet)."""
    family = data.get("family", "densenet")
    if family not in _FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; known: {', '.join(_FAMILIES)}")
    return _FAMILIES[family].from_dict(data)


def is_densenet(name: str) -> bool:
    """Whether a registered (or CIFAR pattern) name is a DenseNet rather than a baseline."""
    return isinstance(get_config(name), DenseNetConfig)


def list_models(pattern: str = "*") -> list[str]:
    """Registered variant names matching a shell-style pattern.

    Args:
        pattern: A shell-style pattern, e.g. ``"densenet_bc*"``.

    Returns:
        The matching names, sorted.
    """
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_config(name: str, **overrides: object) -> ModelConfig:
    """The config of a named variant with fields overridden.

    Args:
        name: A registered name or a CIFAR pattern name (``densenet_bc100_k12``).
        **overrides: Config fields to replace, e.g. ``num_classes=100``.

    Returns:
        The frozen config (``DenseNetConfig`` or a baseline's config).

    Raises:
        ConfigError: An unknown name (with the closest names) or an unknown field.
    """
    config = _REGISTRY.get(name) or parse_cifar_name(name)
    if config is None:
        raise _unknown(name)
    if not overrides:
        return config
    reject_unknown_fields(overrides, type(config), "model setting")
    return replace(config, **overrides)


def parse_cifar_name(name: str) -> DenseNetConfig | None:
    """The config a CIFAR pattern name (``densenet_bc100_k12``) stands for, or None."""
    match = CIFAR_NAME.match(name) if isinstance(name, str) else None
    if match is None:
        return None
    kind, depth, growth = match.group(1) or "", int(match.group(2)), int(match.group(3))
    return cifar_config(depth, growth, bottleneck="b" in kind, compression=0.5 if "c" in kind else 1.0)


def _unknown(name: str) -> UnknownModelError:
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(list_models())}"
    return UnknownModelError(
        f"unknown model {name!r}; {hint} (or any CIFAR network named densenet[_b|_c|_bc]<depth>_k<growth>)"
    )
