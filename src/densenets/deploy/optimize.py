"""``optimize_for_inference``: one entry point, one module per runtime behind it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..models.densenet import DenseNet
from .choice import default_backend
from .pytorch import InferenceDenseNet

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
RUNS = {"torch": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}


def optimize_for_inference(
    model: DenseNet,
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

    Args:
        model: A trained DenseNet.
        backend: ``"torch"``, ``"onnxruntime"``, ``"openvino"`` or ``None`` (the fastest
            installed for the precision).
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        calibration: int8 only: a tensor, a DataLoader or a folder of images.
        preprocess: int8 with a folder: the model's test-time preprocessing dict.

    Returns:
        An eval-only module; its ``backend`` attribute names the runtime that runs it.

    Raises:
        TypeError: ``model`` is not one of our DenseNets.
        ValueError: An unknown backend or precision, a backend that does not run the
            precision, or ``calibration`` without int8.
        UserError: int8 on a CPU without VNNI, or a backend whose package is not installed.

    Example:
        >>> fast = densenets.optimize_for_inference(model, precision="bf16")  # doctest: +SKIP
        >>> logits = fast(images)  # doctest: +SKIP
    """
    if not isinstance(model, DenseNet):
        raise TypeError(f"optimize_for_inference expects a densenets DenseNet, got {type(model).__name__}")
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
        from .quantize import calibration_batches, check_int8_ready

        check_int8_ready(backend)
        c = model.config
        batches = calibration_batches(calibration, c.in_channels, c.num_classes, preprocess,
                                      spatial_dims=getattr(c, "spatial_dims", 2))  # fmt: skip
    elif calibration is not None:
        raise ValueError(f"calibration is for precision='int8' only; got it with precision={precision!r}")
    if backend == "torch":
        if model.config.spatial_dims != 2:  # its folded kernels are written for (N, C, H, W)
            raise ValueError(
                f"the torch backend of optimize_for_inference runs 2-D DenseNets only; this one has "
                f"spatial_dims={model.config.spatial_dims} (use backend='openvino' (fp32, bf16, int8) or "
                "'onnxruntime' (fp32, int8), or the module itself)"
            )
        fast = InferenceDenseNet(model)
        fast = fast.to(torch.bfloat16) if precision == "bf16" else fast
    elif backend == "onnxruntime":
        from .onnx_runtime import onnxruntime_densenet

        fast = onnxruntime_densenet(model, precision, calibration=batches)
    else:
        from .openvino import openvino_densenet

        fast = openvino_densenet(model, precision, calibration=batches)
    fast.backend = backend
    return fast
