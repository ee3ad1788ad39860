"""The exported graph both CPU runtimes read: an eval fp32 copy of a model, and its ONNX bytes.

ONNX Runtime runs the ONNX graph; OpenVINO converts the same plain copy; ``densenets export``
writes both. Neither runtime imports the other: they meet here.
"""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import Tensor, nn


def plain_eval_copy(model: nn.Module) -> nn.Module:
    """An eval-mode fp32 copy on the CPU in ordinary (not memory-efficient) mode, for exporters.

    Any model of the registry (DenseNet or ResNet baseline) exports the same way.
    """
    model = copy.deepcopy(model).cpu().eval().float()
    model.set_memory_efficient(False)
    return model


def example_input(model: nn.Module) -> Tensor:
    """One zero image batch (1, C, H, W) at the stem's native size (224 for ImageNet stems, else 32),
    for tracing: the exported graphs take any batch and image size."""
    size = 224 if model.config.stem == "imagenet" else 32
    return torch.zeros(1, model.config.in_channels, size, size)


def onnx_bytes(model: nn.Module, example: Tensor, opset: int = 17) -> bytes:
    """The model as an ONNX graph with dynamic batch, height and width."""
    buffer = io.BytesIO()
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript-based exporter: no onnxscript needed
        torch.onnx.export(
            model, (example,), buffer, input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": axes, "logits": {0: "batch"}}, opset_version=opset, dynamo=False,
        )  # fmt: skip
    return buffer.getvalue()
