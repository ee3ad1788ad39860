"""DenseNet models: the network, its config, the registry of named variants, and weights."""

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
from .factory import create_model
from .features import DenseNetFeatures
from .pretrained import PretrainedEntry, data_config, list_pretrained, register_weights
from .registry import UnknownModelError, get_config, list_models, register_model

__all__ = [
    "VARIANTS",
    "DenseBlock",
    "DenseLayer",
    "DenseNet",
    "DenseNetConfig",
    "DenseNetFeatures",
    "PretrainedEntry",
    "Transition",
    "UnknownModelError",
    "cifar_config",
    "create_model",
    "data_config",
    "get_config",
    "imagenet_config",
    "list_models",
    "list_pretrained",
    "register_model",
    "register_weights",
]
