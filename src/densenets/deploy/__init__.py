"""Runtimes for a trained model: ``optimize_for_inference`` and one module per backend.

``pytorch`` (BatchNorm folded, a shared block buffer), ``onnx_runtime`` (ONNX Runtime),
``openvino`` (OpenVINO, int8 by NNCF), ``graph`` (the exported graph both runtimes read),
``calibration`` (what int8 needs, for any backend), ``quantize`` (ONNX Runtime's int8),
``folding`` (BatchNorm into convs) and ``precision`` (``--precision`` of eval, predict and
export). This package imports ``densenets.models``; models never import it (import-linter
checks both, pyproject.toml).
"""

from .optimize import BACKENDS, PRECISIONS, optimize_for_inference
from .pytorch import InferenceDenseNet

__all__ = ["BACKENDS", "PRECISIONS", "InferenceDenseNet", "optimize_for_inference"]
