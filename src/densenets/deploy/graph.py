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


def example_input(config, batch: int = 1, size=None, generator: torch.Generator | None = None) -> Tensor:
    """A random input for a model of ``config``: (batch, C, *spatial), for tracing and checks (the
    exported graphs take any batch and spatial size). ``size``: an int (each side) or one per
    spatial dim; default 224 for an ImageNet-stem image model, else 32 (a volume: 32 per side)."""
    dims = getattr(config, "spatial_dims", 2)
    size = size or (224 if config.stem == "imagenet" and dims == 2 else 32)
    sides = (int(size),) * dims if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    return torch.randn(batch, config.in_channels, *sides, generator=generator)


def spatial_axes(dims: int) -> dict[int, str]:
    """The dynamic axes of an input with ``dims`` spatial dims: batch, then length / height, width / depth too."""
    names = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}[dims]
    return {0: "batch", **{2 + i: name for i, name in enumerate(names)}}


def input_shape(runner: nn.Module) -> str:
    """The input a runtime module takes, in words: (N, C, H, W) or (N, C, D, H, W)."""
    spatial = {3: "L", 4: "H, W", 5: "D, H, W"}[runner.input_dims]
    return f"(N, {runner.in_channels}, {spatial})"


def onnx_bytes(model: nn.Module, example: Tensor, opset: int = 17) -> bytes:
    """The model as an ONNX graph with dynamic batch and spatial sizes (height and width; depth for a volume)."""
    buffer = io.BytesIO()
    axes = spatial_axes(example.dim() - 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript-based exporter: no onnxscript needed
        torch.onnx.export(
            model, (example,), buffer, input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": axes, "logits": {0: "batch"}}, opset_version=opset, dynamo=False,
        )  # fmt: skip
    return buffer.getvalue()
