"""Which backend runs a precision when none is named: the fastest one installed, as measured.

The order below is the one place this choice is made (``optimize_for_inference``, ``eval``,
``predict`` and ``export`` all ask :func:`default_backend`). The figures behind it (DenseNet-121,
224x224, batch 16, img/s; issue 21's table, a 2-core AMD EPYC Zen 4 with AVX-512 bf16 and VNNI,
3 interleaved rounds; torchvision eager channels_last fp32 ran at 23.3 there):

- bf16: OpenVINO (bf16 hint) 65.1 on torchvision's graph, our PyTorch path 56.3: OpenVINO first;
- int8: OpenVINO with NNCF 114.9, ONNX Runtime's static quantization of ours 21-30: OpenVINO first;
- fp32: OpenVINO 31.3, our PyTorch path 28.7; the PyTorch path stays the default all the same:
  exact to float rounding on any device, no extra dependency, and within 10% here.

``densenets bench --sections infer`` times ours through each candidate backend in the same
rounds as the peers (docs/benchmarks.md, run 8), so the order can be checked on any CPU.
A GPU (any non-CPU device) always gets the PyTorch path: the other runtimes run on CPUs.
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
