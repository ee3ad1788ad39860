"""``optimize_for_inference``: one entry point, one module per runtime behind it."""

from __future__ import annotations

import torch
from torch import nn

from ..models.densenet import DenseNet
from .pytorch import InferenceDenseNet

BACKENDS = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "bf16", "int8")


def optimize_for_inference(
    model: DenseNet,
    backend: str | None = None,
    precision: str = "fp32",
    calibration=None,
    preprocess: dict | None = None,
) -> nn.Module:
    """The fastest way to run a trained DenseNet forward: an eval-only module, same outputs.

    ``backend="torch"`` (default for fp32 and bf16, no extra dependency): a copy with BatchNorm
    folded into the convs and one multiply-add-ReLU pass per remaining BatchNorm; it runs on the
    model's device (CPU or GPU). ``backend="onnxruntime"``: the model exported in memory and run
    by ONNX Runtime on the CPU (needs ``pip install 'densenets[export]'``).

    ``precision="bf16"`` (torch backend): BatchNorm is folded in fp32, then weights and
    activations are stored in bfloat16 (convolutions accumulate in fp32 inside oneDNN/cuDNN);
    logits come back as fp32. Outputs then agree with fp32 to bf16 rounding, not exactly.

    ``precision="int8"`` (ONNX Runtime, the default and only backend for it; CPU with VNNI):
    post-training static quantization with per-channel int8 weights, BatchNorm folded before
    quantization, activation ranges calibrated on ``calibration``: a tensor (N, C, H, W), a
    DataLoader (of images or (images, labels)), or a folder of images (read with
    ``preprocess``, the model's test-time preprocessing dict). At most 256 images are used.
    Outputs are approximate; see docs/inference.md for the measured accuracy.

    For fp32, ``optimize_for_inference(model)(x)`` equals ``model.eval()(x)`` to float rounding.
    The source model is not modified. Use the original module for training or export.
    """
    if not isinstance(model, DenseNet):
        raise TypeError(f"optimize_for_inference expects a densenets DenseNet, got {type(model).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid precisions: {', '.join(PRECISIONS)}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if precision == "int8":
        if backend == "torch":
            raise ValueError("precision='int8' runs through ONNX Runtime; pass backend='onnxruntime' or no backend")
        from .onnx_runtime import onnxruntime_densenet
        from .quantize import calibration_batches, check_int8_ready

        check_int8_ready()
        c = model.config
        batches = calibration_batches(calibration, c.in_channels, c.num_classes, preprocess)
        return onnxruntime_densenet(model, "int8", calibration=batches)
    if calibration is not None:
        raise ValueError(f"calibration is for precision='int8' only; got it with precision={precision!r}")
    if backend in (None, "torch"):
        fast = InferenceDenseNet(model)
        return fast.to(torch.bfloat16) if precision == "bf16" else fast
    if precision != "fp32":
        raise ValueError(f"backend={backend!r} runs fp32 and int8; use backend='torch' for precision={precision!r}")
    from .onnx_runtime import onnxruntime_densenet

    return onnxruntime_densenet(model)
