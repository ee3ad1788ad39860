"""densenets: every DenseNet of Huang et al. (CVPR 2017), exact, fast and trainable."""

from ._version import __version__
from .deploy import optimize_for_inference
from .engine.loading import load
from .interpret import explain
from .models import (
    DenseNet,
    DenseNetConfig,
    cifar_config,
    create_model,
    get_config,
    list_models,
    list_pretrained,
    register_model,
    register_weights,
)
from .preprocessing import data_config, transforms

__all__ = [
    "DenseNet",
    "DenseNetConfig",
    "__version__",
    "cifar_config",
    "create_model",
    "data_config",
    "explain",
    "get_config",
    "list_models",
    "list_pretrained",
    "load",
    "optimize_for_inference",
    "register_model",
    "register_weights",
    "transforms",
]
