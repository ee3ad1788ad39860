"""``--precision fp32|bf16|int8`` and ``--backend`` for eval, predict and export: a loaded model made fast.

One rule for every command (:func:`plan`): fp32 without a backend runs the model itself;
otherwise the named backend or the fastest installed one (:mod:`densenets.deploy.choice`)
runs it. ONNX Runtime and OpenVINO run on the CPU: with ``--device auto`` they run there and
say so; another ``--device`` is refused in one line. bf16 and int8 outputs are approximate;
the dict returned says so, and the commands print it.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import ConfigError, UserError
from ..models.weights import LoadedModel
from .calibration import CALIBRATION_IMAGES, UncheckedCpuWarning, calibration_batches, check_int8_ready
from .choice import CPU_ONLY, NAMES, default_backend
from .optimize import BACKENDS, PRECISIONS, RUNS, optimize_for_inference

HOW = {
    "fp32": "fp32 (exact to float rounding",
    "bf16": "bf16 (approximate: weights and activations rounded to bfloat16, accumulated in fp32",
    "int8": "int8 (approximate: static quantization, per-channel int8 weights, calibrated on {n} images",
}
QUANTIZER = {"openvino": "NNCF post-training quantization", "onnxruntime": "ONNX Runtime static quantization"}


def plan(precision: str, backend: str = "auto", device: str = "auto") -> tuple[str | None, str]:
    """``(backend, device)`` for ``--precision``, ``--backend`` and ``--device``; backend None: the model itself."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if backend not in ("auto", *BACKENDS):
        raise UserError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    if backend == "auto":
        if precision == "fp32":
            return None, device
        gpu = device not in ("auto", "cpu") or (device == "auto" and torch.cuda.is_available())
        backend = default_backend(precision, "cuda" if gpu else "cpu")
    if precision not in RUNS[backend]:
        runs = " or ".join(b for b in BACKENDS if precision in RUNS[b])
        raise UserError(f"--backend {backend} runs {', '.join(RUNS[backend])}; for --precision {precision} use {runs}")
    if backend in CPU_ONLY:
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--precision {precision} runs through {NAMES[backend]}, on the CPU; "
                              "leave out --device or pass --device cpu")  # fmt: skip
        device = "cpu"
    return backend, device


def note(precision: str, backend: str | None, chosen: bool, images: int = 0) -> str:
    """One line saying what ran: precision, exactness, backend and why it was picked."""
    if backend is None:
        return "fp32 (exact)"
    how = HOW[precision].format(n=images)
    if precision == "int8":
        how = how.replace("static quantization", QUANTIZER[backend])
    where = " on the CPU" if backend in CPU_ONLY else ""
    why = f", the fastest installed for {precision}" if chosen else ""
    return f"{how}); backend {NAMES[backend]}{where}{why}"


def auto_calibration_set(loaded: LoadedModel):
    """A few hundred of the training rows of the run's own split (never its validation or test
    rows), with the test-time transform."""
    from dataclasses import replace

    from torch.utils.data import Subset

    from ..data import build_data
    from ..data.images import with_transform
    from ..data.recorded import recorded_spec
    from ..data.transforms import eval_transform

    if not loaded.run_config.get("recipe", {}).get("data"):
        raise UserError("--calibration auto needs a run that records its data set; pass --calibration DIR of images")
    spec, notes = recorded_spec(loaded.run_config, loaded.preprocess)
    loaded.notes += [n for n in notes if n not in loaded.notes]  # printed with the model's notes
    # "cifar10+" -> "cifar10": the same images and split, not augmented
    bundle = build_data(replace(spec, name=spec.name.removesuffix("+")))
    if loaded.preprocess.get("volume_size"):  # the training volumes without their flips and crops
        from ..data.volumes import VolumeTransform

        train = with_transform(bundle.train, VolumeTransform(loaded.preprocess))
    elif bundle.augment == "none":
        train = bundle.train
    else:
        train = with_transform(bundle.train, eval_transform(loaded.preprocess))
    step = max(1, len(train) // CALIBRATION_IMAGES)  # spread over the whole set (it is ordered by class for some)
    return Subset(train, range(0, len(train), step)[:CALIBRATION_IMAGES])


def with_precision(loaded: LoadedModel, precision: str, calibration: str | None = None,
                   backend: str = "auto", device: str = "auto") -> tuple[nn.Module, dict]:  # fmt: skip
    """(module, {"precision", "backend", "device", "note", "calibration_images"}) running ``loaded.model``.

    ``calibration`` (int8 only): a folder of images, or ``"auto"`` (None means auto).
    ``backend``/``device``: as :func:`plan` resolves them (the module runs on that device).
    """
    chosen, device = plan(precision, backend, device)
    info = {"precision": precision, "backend": chosen or "module", "device": device}
    if precision != "int8" and calibration is not None:
        raise UserError("--calibration is for --precision int8 only")
    if chosen is None:
        return loaded.model, {**info, "note": note(precision, None, False)}
    dims = getattr(loaded.model.config, "spatial_dims", 2)
    if chosen == "torch" and dims != 2 and precision == "bf16":  # torch's CPU 3-D pooling has no bf16 kernel
        raise UserError(f"--precision {precision} through PyTorch runs 2-D models only and this one is {dims}-D: "
                        "pass --backend openvino on the CPU, or --precision fp32")  # fmt: skip
    # The caller's model stays where and as it is: every backend builds from a copy (the CPU
    # runtimes export a CPU copy; the torch path copies on the model's device).
    batches, count, unchecked = None, 0, None
    if precision == "int8":
        unchecked = check_int8_ready(chosen)
        from torch.utils.data import DataLoader

        c = loaded.model.config
        auto = calibration in (None, "auto")
        source = DataLoader(auto_calibration_set(loaded), batch_size=32) if auto else calibration
        batches = calibration_batches(source, c.in_channels, c.num_classes, loaded.preprocess, loaded.class_names,
                                      spatial_dims=getattr(c, "spatial_dims", 2))  # fmt: skip
        count = sum(len(b) for b in batches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncheckedCpuWarning)  # said in the note below instead
        module = optimize_for_inference(loaded.model, backend=chosen, precision=precision, calibration=batches)
    info["note"] = note(precision, chosen, backend == "auto", count) + (f"; {unchecked}" if unchecked else "")
    if precision == "int8":
        info["calibration_images"] = count
    return module, info
