"""Models: the DenseNet, the paper's ResNet baselines, their configs, one registry of named variants, and weights."""

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
from .registry import UnknownModelError, build_model, config_from_dict, get_config, list_models, register_model
from .resnet_cifar import CifarResNet, CifarResNetConfig
from .resnet_imagenet import TorchvisionResNet, TorchvisionResNetConfig

__all__ = [
    "VARIANTS",
    "CifarResNet",
    "CifarResNetConfig",
    "TorchvisionResNet",
    "TorchvisionResNetConfig",
    "build_model",
    "config_from_dict",
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
