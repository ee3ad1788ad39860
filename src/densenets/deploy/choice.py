"""Which backend runs a precision when none is named: the fastest one installed, as measured.

The order below is the one place this choice is made (``optimize_for_inference``, ``eval``,
``predict`` and ``export`` all ask :func:`default_backend`). Figures: DenseNet-121, 224x224,
batch 16 (img/s; ``densenets bench --sections infer``, docs/bench-cpu/run8, a 2-core AMD
EPYC Zen 4 with AVX-512 bf16 and VNNI):

- bf16: OpenVINO (bf16 hint) first, then our PyTorch path (BatchNorm folded, bf16 weights);
- int8: OpenVINO with NNCF quantization first, then ONNX Runtime static quantization.

fp32 keeps the PyTorch path: exact to float rounding, on any device, no extra dependency.
A GPU (or any non-CPU device) always gets the PyTorch path: the other runtimes run on CPUs.
"""

from __future__ import annotations

import importlib.util

FASTEST_FIRST = {
    "fp32": ("torch",),
    "bf16": ("openvino", "torch"),
    "int8": ("openvino", "onnxruntime"),
}
NEEDS = {  # the packages a backend imports at each precision
    "torch": (),
    "onnxruntime": ("onnx", "onnxruntime"),
    "openvino": ("openvino",),
}
CPU_ONLY = ("onnxruntime", "openvino")
NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def installed(backend: str, precision: str = "fp32") -> bool:
    needs = NEEDS[backend] + (("nncf",) if backend == "openvino" and precision == "int8" else ())
    return all(importlib.util.find_spec(name) is not None for name in needs)


def default_backend(precision: str, device: str = "cpu") -> str:
    """The fastest installed backend for ``precision`` on ``device`` ("cpu", "cuda", ...).

    When none is installed, the last of the list (whose missing package the caller then names).
    """
    order = FASTEST_FIRST[precision]
    if device != "cpu":
        order = tuple(b for b in order if b not in CPU_ONLY) or order
    return next((b for b in order if installed(b, precision)), order[-1])
