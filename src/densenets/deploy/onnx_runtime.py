"""``optimize_for_inference(model, backend="onnxruntime")``: the model run by ONNX Runtime.

On a CPU, ONNX Runtime's graph optimiser and kernels run DenseNet-121 forward about 1.9x
faster than our layer-by-layer module and 1.4x faster than the BN-folded torch path
(measured, docs/benchmarks.md). The model is exported in memory with a dynamic batch and
image size; the module takes and returns torch tensors like any other. With
``precision="int8"`` the graph is first quantized by ONNX Runtime's static quantizer
(:mod:`densenets.deploy.quantize`), for our model or any other, the same way.
"""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..models.densenet import DenseNet


def plain_eval_copy(model: nn.Module) -> nn.Module:
    """An eval-mode fp32 copy on the CPU in ordinary (not memory-efficient) mode, for exporters.

    Any model of the registry (DenseNet or ResNet baseline) exports the same way.
    """
    model = copy.deepcopy(model).cpu().eval().float()
    model.set_memory_efficient(False)
    return model


def example_input(config, batch: int = 1, size=None, generator: torch.Generator | None = None) -> Tensor:
    """A random input for a model of ``config``: (batch, C, *spatial), ``size`` an int (each side) or
    one per spatial dim; default 224 for an ImageNet stem and 32 otherwise (a volume: 32 per side)."""
    dims = getattr(config, "spatial_dims", 2)
    size = size or (224 if config.stem == "imagenet" and dims == 2 else 32)
    sides = (int(size),) * dims if isinstance(size, (int, float)) else tuple(int(s) for s in size)
    return torch.randn(batch, config.in_channels, *sides, generator=generator)


def spatial_axes(dims: int) -> dict[int, str]:
    """The dynamic axes of an input with ``dims`` spatial dims: batch, then length / height, width / depth too."""
    names = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}[dims]
    return {0: "batch", **{2 + i: name for i, name in enumerate(names)}}


def onnx_bytes(model: DenseNet, example: Tensor, opset: int = 17) -> bytes:
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


def input_shape(runner: nn.Module) -> str:
    """The input a runtime module takes, in words: (N, C, H, W) or (N, C, D, H, W)."""
    spatial = {3: "L", 4: "H, W", 5: "D, H, W"}[runner.input_dims]
    return f"(N, {runner.in_channels}, {spatial})"


class OnnxRuntimeModule(nn.Module):
    """An eval-only module whose forward runs ``module`` as an ONNX Runtime session on the CPU.

    Any image model exports the same way (ours or torchvision's), so the two can be compared
    through the same runtime. ``example`` is one input batch (its channel count is checked).
    """

    def __init__(self, module: nn.Module, example: Tensor, precision: str = "fp32", threads: int | None = None,
                 calibration: list[Tensor] | None = None) -> None:  # fmt: skip
        super().__init__()
        if precision not in ("fp32", "int8"):
            raise ValueError(f"the onnxruntime backend runs fp32 or int8; got precision {precision!r}")
        if precision == "int8":
            from .quantize import check_int8_ready

            check_int8_ready()
            if not calibration:
                raise UserError("int8 needs calibration batches: pass calibration=[images (N, C, H, W), ...]")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise UserError(
                "backend='onnxruntime' needs onnx and onnxruntime: pip install 'densenets[export]'"
            ) from exc
        self.in_channels, self.input_dims = int(example.shape[1]), example.dim()
        try:
            graph = onnx_bytes(module, example)
        except ImportError as exc:
            raise UserError(f"backend='onnxruntime' needs the onnx package: pip install onnx ({exc})") from exc
        if precision == "int8":
            from .quantize import quantize_onnx

            graph = quantize_onnx(graph, calibration)
        self.precision = precision
        self.graph = graph  # the ONNX bytes the session runs (int8: the quantized graph)
        self.calibration = list(calibration or [])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.training = False

    def train(self, mode: bool = True) -> OnnxRuntimeModule:
        if mode:
            raise RuntimeError("an ONNX Runtime model is eval-only; train the original module instead")
        return self

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.input_dims or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape {input_shape(self)}, got {tuple(x.shape)}")
        if x.device.type != "cpu":
            raise ValueError(f"the onnxruntime backend runs on the CPU; got a tensor on {x.device}")
        images = x.detach().float().contiguous().numpy()
        (logits,) = self.session.run(["logits"], {"images": images})
        return torch.from_numpy(logits)


def onnxruntime_densenet(model: DenseNet, precision: str = "fp32", threads: int | None = None,
                         calibration: list[Tensor] | None = None) -> OnnxRuntimeModule:  # fmt: skip
    """``optimize_for_inference(model, backend="onnxruntime")``: our DenseNet through ONNX Runtime
    (for int8 with every BatchNorm that follows a conv folded into it first)."""
    example = example_input(model.config)
    if precision == "int8":
        from .folding import folded_copy

        exportable = folded_copy(model)
    else:
        exportable = plain_eval_copy(model)
    runner = OnnxRuntimeModule(exportable, example, precision, threads, calibration)
    runner.config = model.config
    return runner
