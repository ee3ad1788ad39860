"""The data a run read, rebuilt from what it recorded: the one :class:`DataSpec` that eval, int8
calibration and an exported model's record all use, so each splits the images as the run did.

A run records its recipe (config.json's ``recipe``: data, data_dir, seed, val_split, labels,
uncertain, ...) and its test-time transform (``data.preprocess``: mean, std, channels, crop).
An exported model carries :func:`data_record` under ``"data"``, under the same names.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .datasets import DataSpec

# what shapes the data, under the recipe's names (the transform's mean/std/channels/crop are the preprocess record's)
RECORD_KEYS = (
    "data", "data_dir", "seed", "val_split", "labels", "uncertain", "image_size", "augment",
    "verify_images", "skip_bad_images",
)  # fmt: skip
USER_IMAGES = ("imagefolder", "imagenet", "csv")  # the data sets whose augmentation (and so resize) is chosen
FOLDER_AUGMENTS = ("none", "crop", "crop-flip", "imagenet")
SEEDED_SPLITS = ("imagefolder", "csv")  # a flat folder or a CSV without a split column: test rows by seed
ASSUMED = {"seed": 0, "val_split": 0, "uncertain": "ignore"}


def recorded_spec(
    run_config: dict, preprocess: dict, data: str | None = None, data_dir: str | None = None
) -> tuple[DataSpec, list[str]]:
    """(the DataSpec of the run's data, notes on what had to be assumed).

    ``run_config``: a run's config.json (or an exported model's ``{"recipe": data record}``);
    ``preprocess``: the model's test-time transform. ``data`` / ``data_dir``: the user's choice
    of another data set or folder; the split stays the run's (its seed and val_split), and a
    labels CSV the run named is kept only for the run's own folder (another one: its labels.csv).
    """
    record = _recipe_fields(run_config)
    name = data or record.get("data")
    if not name:
        raise ConfigError("this weights file does not say which data set it was trained on; pass --data NAME")
    notes = []
    missing = [k for k in ("seed", "val_split") if k not in record]
    if name == "csv" and "uncertain" not in record:
        missing.append("uncertain")
    if missing and name in SEEDED_SPLITS:  # elsewhere the test set is fixed
        assumed = ", ".join(f"{k} {ASSUMED[k]}" for k in missing)
        notes.append(
            f"the model does not record its run's {', '.join(missing)}: {name} read with {assumed} (the defaults); "
            "a run with others split or labelled its images differently"
        )
    recorded_dir = record.get("data_dir", "data")
    other_dir = data_dir is not None and Path(data_dir) != Path(recorded_dir)
    augment = record.get("augment")
    spec = DataSpec(
        name=name,
        data_dir=data_dir or recorded_dir,
        image_size=preprocess.get("crop") or record.get("image_size"),
        val_split=int(record.get("val_split") or 0),
        seed=int(record.get("seed") or 0),
        verify_images=record.get("verify_images"),
        skip_bad_images=bool(record.get("skip_bad_images")),
        # sets the resize of image folders; the paper's data sets keep theirs
        augment=augment if name in USER_IMAGES and augment in FOLDER_AUGMENTS else None,
        # the model's normalisation and channels (the paper's data sets keep theirs)
        mean=tuple(preprocess["mean"]) if preprocess.get("mean") else None,
        std=tuple(preprocess["std"]) if preprocess.get("std") else None,
        channels=int(preprocess["channels"]) if preprocess.get("channels") else None,
        labels=None if other_dir else record.get("labels"),
        uncertain=record.get("uncertain") or "ignore",
        # volumes: the size and intensity window the run read them with (data.volumes)
        volume_size=_tuple(preprocess.get("volume_size")),
        intensity_window=_tuple(preprocess.get("intensity_window")),
    )
    return spec, notes


def _tuple(value) -> tuple | None:
    return tuple(value) if value else None


def spec_record(spec: DataSpec) -> dict:
    """``spec`` under the recipe's names: what :func:`recorded_spec` reads back."""
    return {
        "data": spec.name, "data_dir": spec.data_dir, "seed": spec.seed, "val_split": spec.val_split,
        "labels": spec.labels, "uncertain": spec.uncertain, "image_size": spec.image_size, "augment": spec.augment,
        "verify_images": spec.verify_images, "skip_bad_images": spec.skip_bad_images,
    }  # fmt: skip


def data_record(run_config: dict, preprocess: dict) -> dict:
    """What an exported model carries about its data (empty when its run is unknown), so an eval
    or a calibration of the exported file splits the images as the run did."""
    if not _recipe_fields(run_config).get("data"):
        return {}
    return spec_record(recorded_spec(run_config, preprocess)[0])


def _recipe_fields(run_config: dict) -> dict:
    """The recorded values of :data:`RECORD_KEYS`; ``augment`` as the run resolved it (config.json's
    ``data.augment``) when the recipe left it to the data set."""
    recipe = run_config.get("recipe") if isinstance(run_config.get("recipe"), dict) else {}
    record = {k: recipe[k] for k in RECORD_KEYS if k in recipe and recipe[k] is not None}
    resolved = (run_config.get("data") or {}).get("augment") if isinstance(run_config.get("data"), dict) else None
    if resolved in FOLDER_AUGMENTS and record.get("data") in USER_IMAGES:
        record["augment"] = resolved
    return record
