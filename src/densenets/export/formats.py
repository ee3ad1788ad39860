"""Export formats. Each export is checked: the exported model is run on random input and
its output compared with PyTorch's (ONNX through onnxruntime when it is installed)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..data.recorded import data_record
from ..deploy.graph import example_input, onnx_bytes
from ..deploy.graph import plain_eval_copy as _exportable
from ..engine.loading import load_model, loaded_notes
from ..errors import UserError
from ..models.weights import MODEL_FORMAT, LoadedModel

FORMATS = ("onnx", "torchscript", "safetensors", "openvino")
OPENVINO_FORMAT = "densenets-openvino/1"  # the JSON beside an exported OpenVINO IR


def _example(model: nn.Module, input_size, batch: int = 2) -> torch.Tensor:
    """A seeded random input: ``input_size`` one side (an int) or (D, H, W) for a volume."""
    return example_input(model.config, batch, input_size, torch.Generator().manual_seed(0))


def input_size_of(loaded: LoadedModel):
    """What a loaded model was trained on: a volume's (D, H, W) or an image's crop side (None if unknown)."""
    return loaded.preprocess.get("volume_size") or loaded.preprocess.get("crop")


def export_onnx(model: nn.Module, path: str | Path, input_size: int | None = None, in_channels: int | None = None,
                opset: int = 17, verify: bool = True) -> dict:  # fmt: skip
    """Write ``path`` (.onnx) with dynamic batch and image (or volume) size; returns the parity check."""
    model = _exportable(model)
    x = _example(model, input_size)
    path = Path(path)
    try:
        path.write_bytes(onnx_bytes(model, x, opset))
    except ImportError as exc:
        raise UserError(f"ONNX export needs the onnx package: pip install 'densenets[export]' ({exc})") from exc
    result = {"path": str(path), "format": "onnx"}
    if verify:
        try:
            import onnxruntime as ort
        except ImportError:
            result["verified"] = "skipped: onnxruntime is not installed"
            return result
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        check = _example(model, input_size, batch=3)  # another batch size than the export's
        got = torch.from_numpy(session.run(None, {"images": check.numpy()})[0])
        with torch.no_grad():
            expected = model(check)
        result.update(_compare(got, expected, "onnxruntime"))
    return result


def export_torchscript(model: nn.Module, path: str | Path, input_size: int | None = None, verify: bool = True) -> dict:
    """Write a traced TorchScript module; returns the parity check."""
    model = _exportable(model)
    x = _example(model, input_size)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
    path = Path(path)
    traced.save(str(path))
    result = {"path": str(path), "format": "torchscript"}
    if verify:
        loaded = torch.jit.load(str(path))
        check = _example(model, input_size, batch=3)
        with torch.no_grad():
            result.update(_compare(loaded(check), model(check), "torch.jit.load"))
    return result


def export_safetensors(loaded: LoadedModel, path: str | Path) -> dict:
    """``path`` (.safetensors weights) and the JSON description beside it, which
    ``create_model(json_path)`` and every densenets command load back."""
    try:
        from safetensors.torch import save_file
    except ImportError as exc:
        raise UserError("safetensors export needs `pip install safetensors` (or 'densenets[export]')") from exc
    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})
    meta = {
        "format": MODEL_FORMAT,
        "name": loaded.name,
        "model": loaded.model.config.to_dict(),
        "preprocess": loaded.preprocess,
        "class_names": loaded.class_names,
        "weights": path.name,
        # what it was trained on and how the run split it, so that `densenets eval model.json` needs
        # no --data and scores the run's own test rows (int8 calibration: its training rows)
        "data": data_record(loaded.run_config, loaded.preprocess),
    }
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=2))
    reloaded = load_model(json_path)
    check = _example(loaded.model, input_size_of(loaded), batch=2)
    original = _exportable(loaded.model)
    with torch.no_grad():
        parity = _compare(_exportable(reloaded.model)(check), original(check), "reloaded safetensors")
    return {"path": str(path), "config": str(json_path), "format": "safetensors", **parity}


def export_onnx_int8(loaded: LoadedModel, path: str | Path, calibration: str | None) -> dict:
    """Write an int8 QDQ ``.onnx`` (as ``--precision int8`` runs it) and check it with onnxruntime
    against the fp32 PyTorch model on the calibration images (top-1 agreement, largest difference)."""
    from ..deploy.precision import with_precision

    module, info = with_precision(loaded, "int8", calibration, backend="onnxruntime", device="cpu")
    path = Path(path)
    path.write_bytes(module.graph)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = _exportable(loaded.model)
    agree = total = 0
    diff = 0.0
    for images in module.calibration[:4]:
        got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
        with torch.no_grad():
            expected = model(images)
        if not torch.isfinite(got).all():
            raise UserError("the int8 ONNX graph gives non-finite outputs; calibrate on images of the model's data set")
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        total += len(images)
        diff = max(diff, (got - expected).abs().max().item())
    return {"path": str(path), "format": "onnx", "precision": "int8", "note": info["note"],
            "verified": "onnxruntime", "top1_agreement": 100.0 * agree / total, "checked_images": total,
            "max_abs_diff": diff}  # fmt: skip


def export_openvino(loaded: LoadedModel, path: str | Path, int8: bool, calibration: str | None) -> dict:
    """Write the OpenVINO IR (``.xml`` + ``.bin``, dynamic batch and image size) and our JSON beside it
    (model config, preprocessing, class names, precision); the IR is read back from disk and checked
    against the fp32 PyTorch model: fp32 to 1e-4, int8 by top-1 agreement on the calibration images."""
    from ..deploy.openvino import check_openvino

    precision = "int8" if int8 else "fp32"
    check_openvino(precision)
    from ..deploy.precision import with_precision

    module, info = with_precision(loaded, precision, calibration, backend="openvino", device="cpu")
    xml = module.save(Path(path).with_suffix(".xml"))
    meta = {
        "format": OPENVINO_FORMAT,
        "name": loaded.name,
        "model": loaded.model.config.to_dict(),
        "preprocess": loaded.preprocess,
        "class_names": loaded.class_names,
        "precision": precision,
        "precision_note": info["note"],
        "data": data_record(loaded.run_config, loaded.preprocess),  # the run's data and split, as the .json export
        "openvino": {"xml": xml.name, "bin": xml.with_suffix(".bin").name, "input": "images", "output": "logits"},
    }
    json_path = xml.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=2))
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    model = _exportable(loaded.model)

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(compiled(images.numpy())[compiled.output(0)].copy())

    result = {"path": str(xml), "config": str(json_path), "format": "openvino", "precision": precision}
    if not int8:
        check = _example(model, input_size_of(loaded), batch=3)
        with torch.no_grad():
            return {**result, **_compare(run(check), model(check), "openvino (IR read back)")}
    agree = total = 0
    diff = 0.0
    for images in module.calibration[:4]:
        got = run(images)
        with torch.no_grad():
            expected = model(images)
        if not torch.isfinite(got).all():
            raise UserError(
                "the int8 OpenVINO model gives non-finite outputs; calibrate on images of the model's data set"
            )
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        total += len(images)
        diff = max(diff, (got - expected).abs().max().item())
    return {**result, "note": info["note"], "verified": "openvino (IR read back)",
            "top1_agreement": 100.0 * agree / total, "checked_images": total, "max_abs_diff": diff}  # fmt: skip


def _compare(got: torch.Tensor, expected: torch.Tensor, what: str) -> dict:
    diff = (got.float() - expected.float()).abs().max().item()
    scale = max(expected.abs().max().item(), 1.0)
    if not diff <= 1e-4 * scale:
        raise UserError(f"{what} output differs from PyTorch's by {diff:.3g}; the export is not trustworthy")
    return {"verified": what, "max_abs_diff": diff}


def export_model(checkpoint: str | Path, fmt: str, out: str | Path | None = None, model_name: str | None = None,
                 input_size: int | None = None, int8: bool = False,
                 calibration: str | None = None) -> dict:  # fmt: skip
    """Load any supported checkpoint and export it; ``out`` defaults to the checkpoint's name.
    ``int8`` (ONNX, OpenVINO): statically quantized, calibrated on ``calibration`` (folder or "auto")."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if (int8 or calibration) and fmt not in ("onnx", "openvino"):
        raise UserError("--int8 and --calibration are for --format onnx or openvino only")
    if calibration and not int8:
        raise UserError("--calibration is for --int8 exports only; add --int8")
    loaded = load_model(checkpoint, model_name)
    size = input_size or input_size_of(loaded)
    suffix = {
        "onnx": ".int8.onnx" if int8 else ".onnx",
        "torchscript": ".torchscript.pt",
        "safetensors": ".safetensors",
        "openvino": ".int8.xml" if int8 else ".openvino.xml",
    }[fmt]
    # named weights (densenet_bc40_k12.cifar10) have no file beside which to write: the current folder
    stem = loaded.source.stem if loaded.source.exists() else loaded.source.name
    target = Path(out) if out else loaded.source.with_name(stem + suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "openvino":
        return export_openvino(loaded, target, int8, calibration)
    if fmt == "onnx" and int8:
        result = export_onnx_int8(loaded, target, calibration)
    elif fmt == "onnx":
        result = export_onnx(loaded.model, target, size)
    elif fmt == "torchscript":
        result = export_torchscript(loaded.model, target, size)
    else:
        result = export_safetensors(loaded, target)
    return {**result, "notes": loaded_notes(loaded)}  # which weights were exported; what was assumed
