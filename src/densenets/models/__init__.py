"""Models: the DenseNet, the paper's ResNet baselines, their configs, and one registry of named variants."""

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
from .registry import (
    UnknownModelError,
    build_model,
    config_from_dict,
    create_model,
    get_config,
    list_models,
    register_model,
)
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
    "Transition",
    "UnknownModelError",
    "cifar_config",
    "create_model",
    "get_config",
    "imagenet_config",
    "list_models",
    "register_model",
]
