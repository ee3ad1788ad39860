"""``precision="int8"``: post-training static quantization through ONNX Runtime.

The model is exported in memory with its BatchNorms folded where a conv precedes them
(the stem's ``norm0`` and each bottleneck's ``norm2``); ONNX Runtime's static quantizer
then calibrates activation ranges on the given images (min-max) and writes a QDQ graph
with per-channel int8 weights. The pre-activation BatchNorm-ReLU on each block's
concatenated maps cannot fold into a conv (a ReLU sits between); it is quantized with the
rest of the graph (ONNX Runtime's default operator set), which kept the test error of a
trained digits model at fp32's, where quantizing only the convolutions lost 0.6 points
(docs/inference.md).
"""

from __future__ import annotations

import logging
import platform
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError, UserError

CALIBRATION_IMAGES = 256  # enough for min-max ranges of a small model; a few seconds to calibrate
QUANTIZED_OPS = None  # ONNX Runtime's default set (Conv, Gemm, Concat, pools, BatchNormalization, ...)


def int8_cpu_problem() -> str | None:
    """Why int8 cannot run fast on this CPU, or None. On x86 it needs VNNI (AVX-512 VNNI or AVX-VNNI)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # ONNX Runtime's int8 kernels use the ARM dot-product instructions there
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = None
    if flags is not None:
        if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
            return None
        return "this CPU has no VNNI int8 instructions (AVX-512 VNNI or AVX-VNNI)"
    capability = torch.backends.cpu.get_cpu_capability()
    return None if capability == "AVX512" else f"this CPU reports {capability}, without AVX-512 int8 instructions"


def check_int8_ready(backend: str = "onnxruntime") -> None:
    """Raise a one-line UserError if int8 cannot run here (CPU instructions, missing packages)."""
    problem = int8_cpu_problem()
    if problem:
        raise UserError(f"int8 needs a CPU with VNNI: {problem}; use precision bf16 or fp32 instead")
    if backend == "openvino":
        from .openvino import check_openvino

        check_openvino("int8")
        return
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"int8 runs through ONNX Runtime, which is missing ({exc}): pip install 'densenets[export]'"
        ) from exc


def calibration_batches(
    calibration,
    in_channels: int,
    num_classes: int | None = None,
    preprocess: dict | None = None,
    class_names: list[str] | None = None,
    limit: int = CALIBRATION_IMAGES,
    batch_size: int = 16,
    spatial_dims: int = 2,
) -> list[Tensor]:
    """Calibration images as CPU float batches (N, C, H, W), at most ``limit`` images.

    ``calibration``: a tensor (N, C, H, W); an iterable of tensors or of (images, labels)
    pairs (a DataLoader); or a folder of image files (class subfolders allowed), read with
    the test-time transform of ``preprocess``. Raises DataError naming what is wrong.
    """
    if calibration is None:
        raise DataError("int8 needs calibration images: pass a DataLoader, a tensor or a folder (CLI: --calibration)")
    if isinstance(calibration, (str, Path)):
        return _folder_batches(Path(calibration), in_channels, preprocess, class_names, limit, batch_size)
    if isinstance(calibration, Tensor):
        calibration = calibration.split(batch_size)
    batches, count = [], 0
    for item in calibration:
        images, labels = (item, None) if isinstance(item, Tensor) else (item[0], item[1] if len(item) > 1 else None)
        images = _checked_images(images, in_channels, spatial_dims)
        known = labels is not None and num_classes and isinstance(labels, Tensor) and labels.numel()
        if known and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(
                f"calibration labels run to {int(labels.max())} but the model has {num_classes} classes: "
                "calibrate on images of the model's own data set"
            )
        batches.append(images[: limit - count])
        count += len(batches[-1])
        if count >= limit:
            break
    if count == 0:
        raise DataError("the calibration data holds no images: give at least one batch")
    return batches


def _checked_images(images, in_channels: int, spatial_dims: int = 2) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 2 + spatial_dims:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        sides = {1: "L", 2: "H, W", 3: "D, H, W"}[spatial_dims]
        raise DataError(f"calibration images must be batches of shape (N, {in_channels}, {sides}); got {shape}")
    if images.shape[1] != in_channels:
        raise DataError(
            f"calibration images have {images.shape[1]} channels but the model takes {in_channels}: "
            "calibrate on images like the model's own inputs"
        )
    return images.detach().float().cpu()


def _folder_batches(folder: Path, in_channels: int, preprocess: dict | None, class_names: list[str] | None,
                    limit: int, batch_size: int) -> list[Tensor]:  # fmt: skip
    from ..data.images import IMAGE_SUFFIXES, read_image
    from ..data.transforms import image_transform

    if not folder.is_dir():
        raise DataError(f"calibration folder {folder} does not exist: give a folder of images or 'auto'")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"calibration folder {folder} holds no image files: add a few hundred training images")
    classes = sorted({p.parent.name for p in files if p.parent != folder})
    if class_names and classes:
        unknown = [c for c in classes if c not in class_names]
        if unknown:
            raise DataError(
                f"calibration folder {folder} has class folders the model does not know ({', '.join(unknown[:5])}): "
                "calibrate on images of the model's own classes"
            )
    if preprocess is None:
        raise DataError("calibrating on a folder needs the model's preprocessing (mean, std, crop, channels)")
    if preprocess.get("channels", in_channels) != in_channels:
        raise DataError(f"the preprocessing makes {preprocess['channels']} channels but the model takes {in_channels}")
    transform = image_transform(preprocess)
    step = max(1, len(files) // limit)  # spread the chosen images over all classes
    images = [transform(read_image(p)) for p in files[::step][:limit]]
    return [torch.stack(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]


def quantize_onnx(graph: bytes, batches: Iterable[Tensor], input_name: str = "images") -> bytes:
    """A QDQ int8 graph: per-channel int8 weights, int8 activations calibrated (min-max) on ``batches``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{input_name: b.numpy()} for b in batches])

        def get_next(self):
            return next(self.batches, None)

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the quantizer logs one line per BatchNorm weight it keeps per-tensor
    try:
        return _quantize(graph, Reader())
    finally:
        logging.disable(previous)


def _quantize(graph: bytes, reader) -> bytes:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, quantized = Path(tmp, "model.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        source.write_bytes(graph)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # shapes + conv/BN fusions
        quantize_static(
            str(prepared), str(quantized), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=output_layers(prepared),
        )  # fmt: skip
        return quantized.read_bytes()


def output_layers(path: Path) -> list[str]:
    """The nodes that write the graph's outputs (the classifier's Gemm), kept in float.

    Quantized, the classifier's output lies on an int8 grid (a step of about 0.12 on the shipped
    CIFAR-10 weights): 1% of the test images then had two classes tied for the top logit, and
    which one won depended on the caller's tie-breaking (argmax against topk: 14.24% against
    14.13% test error from the same model). In float the logits keep their order; the
    classifier is a few thousandth of the network's work.
    """
    import onnx

    graph = onnx.load(str(path)).graph
    outputs = {o.name for o in graph.output}
    return [node.name for node in graph.node if outputs.intersection(node.output)]
