"""``--precision fp32|bf16|int8`` for eval, predict and export: a loaded model made fast.

bf16 and int8 outputs are approximate; the dict returned says so, and the commands print it.
"""

from __future__ import annotations

from torch import nn

from ..errors import UserError
from ..models.weights import LoadedModel
from .optimize import PRECISIONS, optimize_for_inference
from .quantize import CALIBRATION_IMAGES, calibration_batches, check_int8_ready

NOTES = {
    "fp32": "fp32 (exact)",
    "bf16": "bf16 (approximate: weights and activations rounded to bfloat16, BatchNorm folded in fp32)",
    "int8": "int8 (approximate: ONNX Runtime static quantization, per-channel int8 weights, calibrated on {n} images)",
}


def auto_calibration_set(loaded: LoadedModel):
    """A few hundred training images of the run's own data set, with the test-time transform."""
    from torch.utils.data import Subset

    from ..data import DataSpec, build_data
    from ..data.images import with_transform
    from ..data.transforms import eval_transform

    recipe = loaded.run_config.get("recipe", {})
    if not recipe.get("data"):
        raise UserError("--calibration auto needs a run that records its data set; pass --calibration DIR of images")
    name = recipe["data"].removesuffix("+")  # "cifar10+" -> "cifar10": the same images, not augmented
    bundle = build_data(DataSpec(name=name, data_dir=recipe.get("data_dir", "data"),
                                 image_size=loaded.preprocess.get("crop")))  # fmt: skip
    train = (
        bundle.train if bundle.augment == "none" else with_transform(bundle.train, eval_transform(loaded.preprocess))
    )
    step = max(1, len(train) // CALIBRATION_IMAGES)  # spread over the whole set (it is ordered by class for some)
    return Subset(train, range(0, len(train), step)[:CALIBRATION_IMAGES])


def with_precision(loaded: LoadedModel, precision: str, calibration: str | None = None) -> tuple[nn.Module, dict]:
    """(module, {"precision", "note", "calibration_images"}) running ``loaded.model`` at ``precision``.

    ``calibration`` (int8 only): a folder of images, or ``"auto"`` (None means auto).
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision != "int8":
        if calibration is not None:
            raise UserError("--calibration is for --precision int8 only")
        module = loaded.model if precision == "fp32" else optimize_for_inference(loaded.model, precision=precision)
        return module, {"precision": precision, "note": NOTES[precision]}
    check_int8_ready()
    from torch.utils.data import DataLoader

    model = loaded.model.cpu()
    c = model.config
    auto = calibration in (None, "auto")
    source = DataLoader(auto_calibration_set(loaded), batch_size=32) if auto else calibration
    batches = calibration_batches(source, c.in_channels, c.num_classes, loaded.preprocess, loaded.class_names)
    count = sum(len(b) for b in batches)
    module = optimize_for_inference(model, precision="int8", calibration=batches)
    return module, {"precision": "int8", "note": NOTES["int8"].format(n=count), "calibration_images": count}
