"""DenseNet models: the network, its config, and the registry of named variants."""

from .densenet import (
    VARIANTS,
    DenseBlock,
    DenseLayer,
    DenseNet,
    DenseNetConfig,
    Transition,
    cifar_config,
    imagenet_config,
)
from .registry import UnknownModelError, create_model, get_config, list_models, register_model

__all__ = [
    "VARIANTS",
    "DenseBlock",
    "DenseLayer",
    "DenseNet",
    "DenseNetConfig",
    "Transition",
    "UnknownModelError",
    "cifar_config",
    "create_model",
    "get_config",
    "imagenet_config",
    "list_models",
    "register_model",
]
