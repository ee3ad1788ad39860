"""Runtimes for a trained model: ``optimize_for_inference`` and one module per backend.

``pytorch`` (BatchNorm folded, a shared block buffer), ``onnx_runtime`` (ONNX Runtime),
``quantize`` (int8 calibration and quantization), ``folding`` (BatchNorm into convs) and
``precision`` (``--precision`` of eval, predict and export). This package imports
``densenets.models``; models never import it.
"""

from .optimize import BACKENDS, PRECISIONS, optimize_for_inference
from .pytorch import InferenceDenseNet

__all__ = ["BACKENDS", "PRECISIONS", "InferenceDenseNet", "optimize_for_inference"]
