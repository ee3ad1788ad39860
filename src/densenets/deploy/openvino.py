"""``backend="openvino"``: the model converted by OpenVINO and compiled for the CPU.

fp32 and bf16 compile the same converted graph with OpenVINO's inference-precision hint
(``f32`` or ``bf16``; OpenVINO would otherwise pick bf16 by itself on CPUs with AMX). int8 is
NNCF post-training quantization of that graph (symmetric int8 activations, per-channel int8
weights), calibrated on the given images like the ONNX Runtime path. Any image model
converts the same way (ours or torchvision's), so the bench compares them through the same
runtime. Needs ``pip install 'densenets[openvino]'``.

One compiled model is kept per input shape: OpenVINO's CPU kernels are fastest on static
shapes, and a new shape (another batch size, the last partial batch) costs one compile.
``dynamic_batch = True`` (what ``densenets serve`` sets, whose batches take every size up to
``--max-batch``) compiles once per image size with the batch dimension left dynamic: on the
2-core Zen 4 of docs/bench-cpu/serve2/openvino-shapes.txt DenseNet-121 (224 px, fp32) compiled in 0.12 s and ran
batches of 1, 15 and 16 at 27.5 to 27.9 ms per image against 27.3 to 27.5 static, where every
static shape cost 0.21 to 0.25 s to compile and about 140 MB of resident memory (15 shapes: +2.1 GB).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import UserError
from .graph import example_input, input_shape, plain_eval_copy

INSTALL = "pip install 'densenets[openvino]'"
PROGRESS = re.compile(r"━|\d+% +\d+/\d+")  # a rich progress bar: "Statistics collection ━━━ 100% 8/8 • ..."
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the ops NNCF leaves in float run in f32


def check_openvino(precision: str = "fp32") -> None:
    """Raise a one-line UserError if OpenVINO (and NNCF, for int8) is missing."""
    names = ("openvino", "nncf") if precision == "int8" else ("openvino",)
    for name in names:
        try:
            __import__(name)
        except ImportError as exc:
            raise UserError(f"backend openvino needs {name}, which is missing ({exc}): {INSTALL}") from exc


@contextlib.contextmanager
def no_cuda_notice():
    """Silence the warning ``torch.utils.cpp_extension`` logs when first imported on a machine
    without CUDA ("No CUDA runtime is found"): with NNCF installed, OpenVINO's converter imports
    ``nncf.torch``, which imports it; nothing here compiles an extension."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def convert(module: nn.Module, example: Tensor):
    """``module`` (eval, fp32, CPU) as an ``openvino.Model`` with dynamic batch, height and width."""
    import openvino as ov

    with torch.no_grad(), warnings.catch_warnings(), no_cuda_notice():
        warnings.simplefilter("ignore", FutureWarning)  # convert_model traces with torch.jit.trace
        shape = (-1, int(example.shape[1]), *(-1,) * (example.dim() - 2))  # dynamic batch and spatial sizes
        model = ov.convert_model(module, example_input=example, input=[shape])
    model.inputs[0].get_tensor().set_names({"images"})
    model.outputs[0].get_tensor().set_names({"logits"})
    return model


def quantize(model, batches: Iterable[Tensor]):
    """NNCF post-training int8 quantization of an ``openvino.Model``, calibrated on ``batches``.

    Every image is its own calibration sample (NNCF's statistics assume one image per item).
    NNCF's full bias correction (not its fast one): on the tests' digits model the fast one
    lost 1.11 points of test error against fp32 (4.17% vs 3.06%), the full one 0.28 (3.33%);
    it costs calibration time, not inference time.
    """
    import nncf

    images = [image[None].numpy() for batch in batches for image in batch]
    with nncf_quietly():
        return nncf.quantize(model, nncf.Dataset(images), subset_size=len(images), fast_bias_correction=False)


@contextlib.contextmanager
def nncf_quietly():
    """NNCF at WARNING (its INFO lines go) and without its progress bars; both restored after.

    NNCF's progress bars ("Statistics collection ━━━ 100% 8/8 ...", drawn by rich on stdout) are
    the known noise: stdout is caught and every other line written back. NNCF's warnings and
    errors (its logger writes them to the console it was imported with), Python warnings and
    stderr pass untouched.
    """
    logger = logging.getLogger("nncf")
    levels = [logger.level] + [h.level for h in logger.handlers]
    for item in [logger, *logger.handlers]:  # what nncf.set_log_level does
        item.setLevel(logging.WARNING)
    caught = io.StringIO()
    try:
        with contextlib.redirect_stdout(caught):
            yield
    finally:
        logger.setLevel(levels[0])
        for handler, level in zip(logger.handlers, levels[1:], strict=False):
            handler.setLevel(level)
        kept = [line for line in caught.getvalue().splitlines() if not PROGRESS.search(line)]
        if kept:
            print("\n".join(kept))


class OpenVinoModule(nn.Module):
    """An eval-only module whose forward runs ``module`` compiled by OpenVINO on the CPU.

    ``example`` is one input batch (its channel count is checked). ``calibration`` (int8):
    image batches (N, C, H, W). ``threads``: OpenVINO's thread count (default: torch's).
    """

    def __init__(self, module: nn.Module | None, example: Tensor, precision: str = "fp32", threads: int | None = None,
                 calibration: list[Tensor] | None = None, ov_model=None) -> None:  # fmt: skip
        super().__init__()
        if precision not in HINTS:
            raise ValueError(f"the openvino backend runs {', '.join(HINTS)}; got precision {precision!r}")
        check_openvino(precision if ov_model is None else "fp32")  # a quantized model needs no NNCF to run
        import openvino as ov

        self.in_channels, self.input_dims = int(example.shape[1]), example.dim()
        self.precision = precision
        self.calibration = list(calibration or [])
        if ov_model is None:  # else an already converted (and for int8 quantized) model, e.g. read from an IR
            if precision == "int8" and not calibration:
                raise UserError("int8 needs calibration batches: pass calibration=[images (N, C, H, W), ...]")
            ov_model = convert(module, example)
            if precision == "int8":
                ov_model = quantize(ov_model, self.calibration)
        self.ov_model = ov_model
        self.core = ov.Core()
        self.compile_config = {
            "INFERENCE_PRECISION_HINT": HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",  # one stream using every thread: what one forward call needs
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        }
        self.compiled: dict[tuple[int, ...], object] = {}
        self.dynamic_batch = False  # True: one compile serves every batch size (see the module's docstring)
        self.training = False

    def train(self, mode: bool = True) -> OpenVinoModule:
        if mode:
            raise RuntimeError("an OpenVINO model is eval-only; train the original module instead")
        return self

    def compiled_for(self, shape: tuple[int, ...]):
        """The model compiled for one input shape (compiled on first use, then kept); with
        :attr:`dynamic_batch`, for every batch size of that image shape (key: batch -1)."""
        if self.dynamic_batch:
            shape = (-1, *shape[1:])
        if shape not in self.compiled:
            static = self.ov_model.clone()
            static.reshape({0: list(shape)})
            self.compiled[shape] = self.core.compile_model(static, "CPU", self.compile_config)
        return self.compiled[shape]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != self.input_dims or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape {input_shape(self)}, got {tuple(x.shape)}")
        if x.device.type != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU; got a tensor on {x.device}")
        compiled = self.compiled_for(tuple(x.shape))
        result = compiled(x.detach().float().contiguous().numpy())
        return torch.from_numpy(result[compiled.output(0)].copy())

    def save(self, path: str | Path) -> Path:
        """Write the OpenVINO IR (``path`` .xml and the .bin beside it), dynamic shapes; returns the .xml."""
        import openvino as ov

        path = Path(path).with_suffix(".xml")
        ov.save_model(self.ov_model, str(path), compress_to_fp16=False)
        return path


def openvino_densenet(model: nn.Module, precision: str = "fp32", threads: int | None = None,
                      calibration: list[Tensor] | None = None,
                      exportable: nn.Module | None = None) -> OpenVinoModule:  # fmt: skip
    """``optimize_for_inference(model, backend="openvino")``: a model of the registry through OpenVINO.

    ``exportable`` is the eval fp32 module to convert (default: a plain copy of ``model``).
    """
    example = example_input(model.config)
    runner = OpenVinoModule(exportable or plain_eval_copy(model), example, precision, threads, calibration)
    runner.config = model.config
    return runner
