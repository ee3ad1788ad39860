"""``optimize_for_inference``: one entry point, one module per runtime behind it."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..models import CifarResNet, DenseNet, TorchvisionResNet
from .calibration import UncheckedCpuWarning, calibration_batches, check_int8_ready
from .choice import default_backend
from .pytorch import InferenceCopy, InferenceDenseNet

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
NETWORKS = (DenseNet, CifarResNet, TorchvisionResNet)  # every family of the registry
RUNS = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}


def optimize_for_inference(
    model: nn.Module,
    backend: str | None = None,
    precision: str = "fp32",
    calibration: torch.Tensor | torch.utils.data.DataLoader | str | Path | None = None,
    preprocess: dict | None = None,
) -> nn.Module:
    """The fastest way to run a trained DenseNet forward: an eval-only module, same outputs.

    ``backend="torch"`` (no extra dependency): a copy with BatchNorm folded into the convs and
    one multiply-add-ReLU pass per remaining BatchNorm; it runs on the model's device (CPU or
    GPU). ``backend="onnxruntime"``: the model exported in memory and run by ONNX Runtime on the
    CPU (``pip install 'densenets[export]'``). ``backend="openvino"``: converted and compiled by
    OpenVINO for the CPU (``pip install 'densenets[openvino]'``). The default (``None``) is the
    fastest installed backend for the precision (:mod:`densenets.deploy.choice`): OpenVINO on a
    CPU at every precision when ``densenets[openvino]`` is installed (measured fastest there), the
    torch path on GPUs and without it (ONNX Runtime for int8). The module's ``backend`` attribute
    says which ran.

    ``precision="bf16"``: BatchNorm folded in fp32, weights and activations in bfloat16
    (accumulation in fp32); logits come back as fp32, equal to fp32's to bf16 rounding.

    ``precision="int8"`` (OpenVINO with NNCF, or ONNX Runtime; a CPU with VNNI): post-training
    static quantization with per-channel int8 weights, activation ranges calibrated on
    ``calibration``: a tensor (N, C, H, W), a DataLoader (of images or (images, labels)), or a
    folder of images (read with ``preprocess``, the model's test-time preprocessing dict). At
    most 256 images are used. Outputs are approximate; see docs/inference.md for the accuracy.

    For fp32, ``optimize_for_inference(model)(x)`` equals ``model.eval()(x)`` to float rounding.
    The source model is not modified. Use the original module for training or export.

    The ResNet baselines of the registry run the same backends; on ``backend="torch"`` they, and
    1-D / 3-D DenseNets, run as an eval copy (cast to bfloat16 for bf16) with nothing folded.

    Args:
        model: A trained DenseNet (or a ResNet baseline of the registry).
        backend: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``None`` (the fastest
            installed for the precision).
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        calibration: int8 only: a tensor, a DataLoader or a folder of images.
        preprocess: int8 with a folder: the model's test-time preprocessing dict.

    Returns:
        An eval-only module; its ``backend`` attribute names the runtime that runs it.

    Raises:
        TypeError: ``model`` is not one of our models.
        ValueError: An unknown backend or precision, a backend that does not run the
            precision, or ``calibration`` without int8.
        UserError: int8 on a CPU without VNNI, or a backend whose package is not installed.

    Example:
        >>> fast = densenets.optimize_for_inference(model, precision="bf16")  # doctest: +SKIP
        >>> logits = fast(images)  # doctest: +SKIP
    """
    if not isinstance(model, NETWORKS):
        names = ", ".join(n.__name__ for n in NETWORKS)
        raise TypeError(f"optimize_for_inference expects a densenets model ({names}), got {type(model).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend is None:
        device = next(model.parameters(), torch.empty(0)).device.type
        backend = default_backend(precision, device)
    if precision not in RUNS[backend]:
        runs = [b for b in BACKENDS if precision in RUNS[b]]
        raise ValueError(f"backend={backend!r} runs {', '.join(RUNS[backend])}; for precision={precision!r} "
                         f"use backend {' or '.join(repr(b) for b in runs)}")  # fmt: skip
    batches = None
    if precision == "int8":
        unchecked = check_int8_ready(backend)
        if unchecked:
            warnings.warn(unchecked, UncheckedCpuWarning, stacklevel=2)
        c = model.config
        batches = calibration_batches(calibration, c.in_channels, c.num_classes, preprocess,
                                      spatial_dims=getattr(c, "spatial_dims", 2))  # fmt: skip
    elif calibration is not None:
        raise ValueError(f"calibration is for precision='int8' only; got it with precision={precision!r}")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    dims = getattr(model.config, "spatial_dims", 2)
    if backend == "torch" and dims != 2 and precision == "bf16":  # torch's CPU 3-D pooling has no bf16 kernel
        raise ValueError(f"the torch backend runs bf16 for 2-D models only; this one has spatial_dims={dims} "
                         "(use backend='openvino')")  # fmt: skip
    if backend == "torch" and isinstance(model, DenseNet) and model.config.spatial_dims == 2:
        fast = InferenceDenseNet(model).to(dtype)  # its folded kernels are written for (N, C, H, W)
    elif backend == "torch":  # the baselines, and 1-D / 3-D DenseNets: an eval copy, nothing folded
        fast = InferenceCopy(model, dtype)
    elif backend == "onnxruntime":
        from .onnx_runtime import onnxruntime_densenet

        fast = onnxruntime_densenet(model, precision, calibration=batches)
    else:
        from .openvino import openvino_densenet

        fast = openvino_densenet(model, precision, calibration=batches)
    fast.backend = backend
    return fast
