"""``optimize_for_inference(model, backend="onnxruntime")``: the model run by ONNX Runtime.

On a CPU, ONNX Runtime's graph optimiser and kernels run DenseNet-121 forward about 1.9x
faster than our layer-by-layer module and 1.4x faster than the BN-folded torch path
(measured, docs/benchmarks.md). The model is exported in memory with a dynamic batch and
image size; the module takes and returns torch tensors like any other. With
``precision="int8"`` the graph is first quantized by ONNX Runtime's static quantizer
(:mod:`densenets.deploy.quantize`), for our model or any other, the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..models.densenet import DenseNet
from .calibration import check_int8_ready
from .folding import folded_copy
from .graph import example_input, input_shape, onnx_bytes, plain_eval_copy
from .quantize import quantize_onnx


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
            check_int8_ready()  # a CPU that could not be checked: optimize_for_inference says so
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


def onnxruntime_densenet(model: nn.Module, precision: str = "fp32", threads: int | None = None,
                         calibration: list[Tensor] | None = None) -> OnnxRuntimeModule:  # fmt: skip
    """``optimize_for_inference(model, backend="onnxruntime")``: a model of the registry through ONNX
    Runtime (for a DenseNet at int8 with every BatchNorm that follows a conv folded into it first;
    ONNX Runtime's own pre-processing fuses the ResNets' conv-BN pairs)."""
    fold = precision == "int8" and isinstance(model, DenseNet)
    exportable = folded_copy(model) if fold else plain_eval_copy(model)
    runner = OnnxRuntimeModule(exportable, example_input(model.config), precision, threads, calibration)
    runner.config = model.config
    return runner
