"""Ship a trained model: ONNX, TorchScript, safetensors + JSON config."""

from .formats import FORMATS, export_model, export_onnx, export_safetensors, export_torchscript

__all__ = ["FORMATS", "export_model", "export_onnx", "export_safetensors", "export_torchscript"]
