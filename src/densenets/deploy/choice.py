"""Which backend runs a precision when none is named: the fastest one installed, as measured.

The order below is the one place this choice is made (``optimize_for_inference``, ``eval``,
``predict`` and ``export`` all ask :func:`default_backend`). The figures behind it: ours through
each backend in the same alternated rounds, DenseNet-121, 224x224, batch 16, img/s, on the
2-core AMD EPYC (Zen 5, AVX-512 bf16 and VNNI) of docs/bench-cpu/run8 (3 rounds):

- fp32: OpenVINO 69.5, our PyTorch path 55.6 (on issue 21's Zen 4: 31.3 and 28.7): OpenVINO
  first. Its outputs equal the model's to float rounding as the PyTorch path's do (fp32
  inference-precision hint; tested), so being exact does not decide it; the PyTorch path stays
  the default when OpenVINO is missing, on GPUs, and for ``eval``/``predict`` without
  ``--precision``/``--backend`` (which run the model itself);
- bf16: OpenVINO (bf16 hint) 146.9, our PyTorch path 94.7: OpenVINO first;
- int8: OpenVINO with NNCF 273.7, ONNX Runtime's static quantization 45.2: OpenVINO first.

``densenets bench --sections infer`` times ours through each candidate backend in the same
rounds as the peers (docs/benchmarks.md, run 8), so the order can be checked on any CPU.
A GPU (any non-CPU device) always gets the PyTorch path: the other runtimes run on CPUs.
"""

from __future__ import annotations

import importlib.util

FASTEST_FIRST = {
    "fp32": ("openvino", "torch"),
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
