"""A small explicit registry: named DenseNet variants -> configs (``create_model`` is in :mod:`.factory`)."""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import fields, replace

from ..errors import ConfigError
from .densenet import VARIANTS, DenseNetConfig, cifar_config

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
    config = _REGISTRY.get(name) or parse_cifar_name(name)
    if config is None:
        raise _unknown(name)
    if not overrides:
        return config
    valid = {f.name for f in fields(DenseNetConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown model setting(s) {unknown}; valid settings: {', '.join(sorted(valid))}")
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
