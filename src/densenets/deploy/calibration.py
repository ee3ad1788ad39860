"""What int8 needs before any backend quantizes: a CPU with int8 instructions, its runtime, and
calibration images. Backend-neutral: ONNX Runtime (:mod:`densenets.deploy.quantize`) and
OpenVINO with NNCF (:mod:`densenets.deploy.openvino`) read the same batches.
"""

from __future__ import annotations

import importlib
import platform
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError, UserError
from .choice import NAMES

CALIBRATION_IMAGES = 256  # enough for min-max ranges of a small model; a few seconds to calibrate
CPUINFO = Path("/proc/cpuinfo")
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
INT8_PACKAGES = {  # what each backend imports to quantize, and how to install it
    "onnxruntime": (("onnx", "onnxruntime.quantization"), "pip install 'densenets[export]'"),
    "openvino": (("openvino", "nncf"), "pip install 'densenets[openvino]'"),
}


class UncheckedCpuWarning(UserWarning):
    """int8 ran on a CPU whose int8 instructions could not be read."""


def int8_cpu_check(cpuinfo: str | Path | None = None) -> tuple[bool | None, str]:
    """Whether int8 can run fast on this CPU: ``(True, "")``, ``(False, why not)``, or ``(None, why
    it could not be checked)``. On x86 it needs VNNI (AVX-512 VNNI or AVX-VNNI), read from the CPU
    flags in ``cpuinfo`` (default /proc/cpuinfo). AVX-512 alone does not imply VNNI (Skylake has
    one, not the other), so without the flags nothing is assumed."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True, ""  # ONNX Runtime's and OpenVINO's int8 kernels use the ARM dot-product instructions there
    cpuinfo = Path(cpuinfo or CPUINFO)
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError as exc:
        return None, f"could not check this CPU for VNNI int8 instructions ({cpuinfo}: {exc.strerror or exc})"
    if flags & VNNI_FLAGS:
        return True, ""
    return False, "this CPU has no VNNI int8 instructions (AVX-512 VNNI or AVX-VNNI)"


def int8_cpu_problem(cpuinfo: str | Path | None = None) -> str | None:
    """Why int8 cannot run fast on this CPU, or None (also when that could not be checked)."""
    ok, why = int8_cpu_check(cpuinfo)
    return why if ok is False else None


def check_int8_ready(backend: str = "onnxruntime") -> str | None:
    """Raise a one-line UserError if int8 cannot run here (CPU instructions, missing packages).

    Returns None, or one line saying the CPU could not be checked (int8 then runs, perhaps slowly).
    """
    ok, why = int8_cpu_check()
    if ok is False:
        raise UserError(f"int8 needs a CPU with VNNI: {why}; use precision bf16 or fp32 instead")
    packages, install = INT8_PACKAGES[backend]
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"int8 through {NAMES[backend]} needs {name}, which is missing ({exc}): {install}") from exc
    return None if ok else f"{why}: int8 runs, and is slow on a CPU without VNNI"


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
