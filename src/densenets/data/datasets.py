"""The paper's data sets by name, loaded with torchvision's own dataset classes.

``build_data(DataSpec(name="cifar10+", data_dir="data"))`` returns a :class:`DataBundle`
with train / test (and optional validation) sets, the number of classes, and the
``preprocess`` dict that rebuilds the test-time transform later.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from ..errors import DataError
from .cifar_files import SafeCifarMixin
from .csv_labels import SPLITS, CsvImageDataset, check_images, check_positives, map_uncertain, read_label_csv
from .determinism import EpochSeededDataset
from .digits import digits_datasets
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    GREY_IMAGENET,
    IMAGENET_MEAN,
    IMAGENET_STD,
    channel_statistics,
    eval_transform,
    train_transform,
)
from .volumes import VolumeTransform, check_volumes, check_window, is_volume, read_volume


@dataclass(frozen=True)
class DataSpec:
    """Which data set, where, and how to split it."""

    name: str = "digits+"
    data_dir: str = "data"
    download: bool = False
    image_size: int | None = None  # digits / imagefolder / imagenet crop size
    val_split: int = 0  # training images held out for validation
    seed: int = 0  # seeds the validation split and per-sample augmentation
    verify_images: bool | None = None  # decode-check every image file up front (None: imagefolder yes, imagenet no)
    skip_bad_images: bool = False  # leave out unreadable image files with a warning instead of failing
    augment: str | None = None  # image folders: none | crop | crop-flip | imagenet (None: by image size)
    mean: tuple[float, ...] | None = None  # image folders: normalisation of the weights fine-tuned (None: ImageNet's)
    std: tuple[float, ...] | None = None
    channels: int | None = None  # image folders: 1 or 3 (None: 1 when the images are grey, else 3; grey
    # images with 3-channel mean/std take their averages, as a stem adapted to one channel does)
    labels: str | None = None  # csv: the labels file (None: DATA_DIR/labels.csv)
    uncertain: str = "ignore"  # csv: what a -1 label becomes: ignore (masked, as unknown) | ones | zeros
    volume_size: tuple[int, ...] | None = None  # csv of volumes: (D, H, W) to resize to (None: the volumes' own)
    intensity_window: tuple[float, ...] | None = None  # csv of volumes: clip to (LOW, HIGH), scale to [0, 1]


@dataclass
class DataBundle:
    name: str
    train: Dataset
    test: Dataset
    val: Dataset | None
    num_classes: int
    in_channels: int
    preprocess: dict
    augment: str  # "none" | "cifar" | "imagenet" | "shift"
    class_names: list[str] = field(default_factory=list)
    multilabel: bool = False  # targets are (C,) floats, 1 / 0 / NaN (unknown), not class indices
    notes: list[str] = field(default_factory=list)  # what was decided about the data, for the run's first lines
    spatial_dims: int = 2  # 3: volumes (N, C, D, H, W), from a CSV of .npy / NIfTI files
    size_origin: str = ""  # volumes: where their (D, H, W) comes from (a CSV line or --volume-size), for messages

    @property
    def image_size(self) -> int:
        return self.preprocess["crop"]


# --------------------------------------------------------------------------------------
# torchvision classes, checking that files are present (checksums only when downloading:
# users keep re-packed or partial copies, and tests write tiny files in the same format);
# CIFAR batches are read by a restricted unpickler (cifar_files), never by pickle.load
# --------------------------------------------------------------------------------------


class _CIFAR10(SafeCifarMixin, tvd.CIFAR10):
    meta = {**tvd.CIFAR10.meta, "md5": None}

    def _check_integrity(self) -> bool:
        folder = Path(self.root, self.base_folder)
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)


class _CIFAR100(SafeCifarMixin, tvd.CIFAR100):
    meta = {**tvd.CIFAR100.meta, "md5": None}

    def _check_integrity(self) -> bool:
        folder = Path(self.root, self.base_folder)
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)


class _SVHN(tvd.SVHN):
    def _check_integrity(self) -> bool:
        return Path(self.root, self.filename).is_file()


def _require_files(title: str, folder: Path, names: list[str], how: str) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{title} not found: {folder} lacks {', '.join(missing)}; {how}")


def _load(title: str, factory: Callable[[], Dataset]) -> Dataset:
    """Construct a torchvision data set, turning its failures into one clear line."""
    try:
        return factory()
    except DataError:
        raise
    except Exception as exc:  # corrupt pickle / .mat, bad archive, no network for --download
        raise DataError(f"could not load {title}: {type(exc).__name__}: {exc}") from exc


def _cifar(spec: DataSpec, hundred: bool, augmented: bool) -> DataBundle:
    cls, title = (_CIFAR100, "CIFAR-100") if hundred else (_CIFAR10, "CIFAR-10")
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if hundred else (CIFAR10_MEAN, CIFAR10_STD)
    root = Path(spec.data_dir)
    if not spec.download:
        names = [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        archive = "cifar-100-python.tar.gz" if hundred else "cifar-10-python.tar.gz"
        _require_files(
            title, root / cls.base_folder, names, f"pass --download to fetch {archive}, or unpack it into {root}"
        )
    preprocess = {"mean": list(mean), "std": list(std), "resize": None, "crop": 32, "channels": 3}
    augment = "cifar" if augmented else "none"
    train = _load(
        title,
        lambda: cls(str(root), train=True, transform=train_transform(preprocess, augment), download=spec.download),
    )
    test = _load(title, lambda: cls(str(root), train=False, transform=eval_transform(preprocess)))
    train_eval = copy.copy(train)
    train_eval.transform = eval_transform(preprocess)
    return _finish(spec, train, train_eval, test, len(train.classes), 3, preprocess, augment, list(train.classes))


def _svhn(spec: DataSpec) -> DataBundle:
    root = Path(spec.data_dir)
    files = [tvd.SVHN.split_list[s][1] for s in ("train", "extra", "test")]
    if not spec.download:
        _require_files("SVHN", root, files, f"pass --download to fetch them, or put the .mat files in {root}")
    # The paper: train + extra, no augmentation, pixels divided by 255 (no mean/std).
    preprocess = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "resize": None, "crop": 32, "channels": 3}
    transform = eval_transform(preprocess)
    parts = [
        _load("SVHN", lambda s=s: _SVHN(str(root), split=s, transform=transform, download=spec.download))
        for s in ("train", "extra")
    ]
    train = torch.utils.data.ConcatDataset(parts)
    test = _load("SVHN", lambda: _SVHN(str(root), split="test", transform=transform, download=spec.download))
    names = [str(i) for i in range(10)]
    return _finish(spec, train, train, test, 10, 3, preprocess, "none", names)


def _image_folder(path: Path, transform, spec: DataSpec, verify_default: bool, channels: int = 3) -> tvd.ImageFolder:
    if not path.is_dir():
        raise DataError(f"image folder not found: {path}")
    verify = verify_default if spec.verify_images is None else spec.verify_images
    checker = _ImageChecker(verify, spec.skip_bad_images)
    loader = functools.partial(_load_image, mode="L" if channels == 1 else "RGB")
    folder = _load(
        f"image folder {path}",
        lambda: tvd.ImageFolder(str(path), transform=transform, loader=loader, is_valid_file=checker),
    )
    if checker.skipped:
        shown = ", ".join(checker.skipped[:3]) + (" ..." if len(checker.skipped) > 3 else "")
        warnings.warn(f"{path}: skipped {len(checker.skipped)} unreadable image file(s): {shown}", stacklevel=2)
    return folder


class _ImageChecker:
    """``is_valid_file`` for ImageFolder: image extensions only, optionally decode-checked."""

    def __init__(self, verify: bool, skip_bad: bool) -> None:
        self.verify, self.skip_bad = verify, skip_bad
        self.skipped: list[str] = []

    def __call__(self, path: str) -> bool:
        if not has_file_allowed_extension(path, IMG_EXTENSIONS):
            return False  # not an image by name (README, labels.txt, ...): ignored, as torchvision does
        if not self.verify:
            return True
        try:
            with Image.open(path) as image:
                image.verify()
            return True
        except Exception as exc:  # PIL raises many types for damaged files
            if self.skip_bad:
                self.skipped.append(path)
                return False
            raise DataError(
                f"{path}: not a readable image ({type(exc).__name__}); remove it or pass --skip-bad-images"
            ) from exc


def _load_image(path: str, mode: str = "RGB") -> Image.Image:
    """ImageFolder's loader, naming the file when it cannot be decoded."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert(mode)
    except Exception as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc


_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def folder_is_grey(root: Path, sample: int = 32) -> bool:
    """True when ``sample`` image files spread across the class folders under ``root`` are all
    single-channel.

    The files are taken in turn from every folder holding images (evenly spaced folders when
    there are more than ``sample``), so one colour class among grey ones is seen, whatever
    order the file system lists them in.
    """
    return images_are_grey(_spread_sample(root, sample), sample)


def _spread_sample(root: Path, sample: int) -> Iterator[Path]:
    """Image files under ``root``, one folder after another in turn, each folder's in sorted order."""
    folders = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files = sorted(f for f in filenames if has_file_allowed_extension(f, IMG_EXTENSIONS))
        if files:
            folders.append((Path(dirpath), files))
    if len(folders) > sample:
        folders = [folders[i * len(folders) // sample] for i in range(sample)]
    for i in range(max((len(files) for _, files in folders), default=0)):
        for folder, files in folders:
            if i < len(files):
                yield folder / files[i]


def images_are_grey(paths: Iterable[Path], sample: int = 32) -> bool:
    """True when the first ``sample`` readable files of ``paths`` are all single-channel images."""
    seen = 0
    for path in paths:
        if seen >= sample:
            break
        try:
            with Image.open(path) as image:
                if image.mode not in _GREY_MODES:
                    return False
        except Exception:
            continue  # unreadable files are reported by the folder check
        seen += 1
    return seen > 0


def choose_augment(size: int) -> str:
    """Small images (<= 64 px): pad-and-crop with flips; larger ones: ImageNet's crops and colour."""
    return "crop-flip" if size <= 64 else "imagenet"


def _user_images_preprocess(spec: DataSpec, title: str, default_size: int, grey: bool) -> tuple[dict, str]:
    """(preprocess, augment) for a user's images: the spec's size, channels, mean and std, else
    ImageNet's (grey images: one channel, mean 0.5, std 0.25); augmentation by image size."""
    size = spec.image_size or default_size
    augment = spec.augment or choose_augment(size)
    channels = spec.channels or (1 if grey else 3)
    mean = list(spec.mean) if spec.mean else (list(IMAGENET_MEAN) if channels == 3 else [0.5])
    std = list(spec.std) if spec.std else (list(IMAGENET_STD) if channels == 3 else [0.25])
    if spec.channels is None and len(mean) == len(std) == 3 and channels == 1:
        # grey images and RGB weights' statistics: the stem is adapted to one channel (models.channels)
        mean, std = channel_statistics(mean, std, 1)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"{title}: mean/std have {len(mean)} values for {channels}-channel images")
    preprocess = {
        "mean": mean,
        "std": std,
        # ImageNet-style crops keep 224/256 of the shorter side; small images are used whole.
        "resize": round(size * 256 / 224) if augment == "imagenet" else size,
        "crop": size,
        "channels": channels,
    }
    return preprocess, augment


def _augment_notes(preprocess: dict, augment: str) -> list[str]:
    """What the run's first lines say about an augmentation that differs from its name's usual steps."""
    if augment == "imagenet" and preprocess["channels"] == 1:
        return [f"augmentation imagenet on grey images: {GREY_IMAGENET}"]
    return []


def _imagenet_like(
    spec: DataSpec, root: Path, title: str, default_size: int, require_split: bool, verify_default: bool
) -> DataBundle:
    grey = root.is_dir() and folder_is_grey(root)
    preprocess, augment = _user_images_preprocess(spec, title, default_size, grey)
    channels = preprocess["channels"]
    train_dir = root / "train"
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if train_dir.is_dir() and test_dir is not None:
        train = _image_folder(train_dir, train_transform(preprocess, augment), spec, verify_default, channels)
        test = _image_folder(test_dir, eval_transform(preprocess), spec, verify_default, channels)
        train_eval = copy.copy(train)
        train_eval.transform = eval_transform(preprocess)
        if train.classes != test.classes:
            raise DataError(f"{title}: {train_dir} and {test_dir} hold different class folders")
        classes = list(train.classes)
    elif require_split:
        raise DataError(
            f"{title} not found: expected {root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG "
            "(ImageNet cannot be downloaded automatically; get ILSVRC2012 from image-net.org)"
        )
    else:
        full = _image_folder(root, train_transform(preprocess, augment), spec, verify_default, channels)
        full_eval = copy.copy(full)
        full_eval.transform = eval_transform(preprocess)
        train_idx, test_idx = _stratified_split(full.targets, 0.2, spec.seed)
        train, train_eval, test = Subset(full, train_idx), Subset(full_eval, train_idx), Subset(full_eval, test_idx)
        classes = list(full.classes)
    bundle = _finish(spec, train, train_eval, test, len(classes), channels, preprocess, augment, classes)
    bundle.notes = _augment_notes(preprocess, augment)
    return bundle


def _imagenet(spec: DataSpec) -> DataBundle:
    root = Path(spec.data_dir)
    if not (root / "train").is_dir() and (root / "imagenet").is_dir():
        root = root / "imagenet"
    if spec.download:
        raise DataError("ImageNet cannot be downloaded automatically; get ILSVRC2012 from image-net.org")
    spec = replace(spec, channels=spec.channels or 3, augment=spec.augment or "imagenet")  # the paper's
    return _imagenet_like(spec, root, "ImageNet", 224, require_split=True, verify_default=False)


def _imagefolder(spec: DataSpec) -> DataBundle:
    return _imagenet_like(spec, Path(spec.data_dir), "image folder", 224, require_split=False, verify_default=True)


def _csv(spec: DataSpec) -> DataBundle:
    """Images listed in a labels CSV (:mod:`.csv_labels`): its split column, else a seeded 80/20 split."""
    labels = Path(spec.labels) if spec.labels else Path(spec.data_dir) / "labels.csv"
    table = read_label_csv(labels)  # -1 unknown; spec.uncertain maps it in the training rows only
    train_table = map_uncertain(table, spec.uncertain)
    kinds = [is_volume(p) for p in table.paths]
    if any(kinds) and not all(kinds):
        line = table.lines[kinds.index(not kinds[0])]
        raise DataError(f"{table.where(line)}: a CSV lists images or volumes (.npy, .nii, .nii.gz), not both")
    if all(kinds):
        check_window(spec.intensity_window)
        rows, skipped, channels, (size, size_origin) = check_volumes(table, spec.volume_size, spec.skip_bad_images)
        preprocess = {
            "mean": [0.0] * channels, "std": [1.0] * channels, "resize": None, "crop": size[-1],
            "channels": channels, "volume_size": list(size),
            "intensity_window": list(spec.intensity_window) if spec.intensity_window else None,
        }  # fmt: skip
        augment, loader = "flip-crop", read_volume
        train_tf, eval_tf = VolumeTransform(preprocess, train=True), VolumeTransform(preprocess)
    else:
        verify = True if spec.verify_images is None else spec.verify_images
        rows, skipped = check_images(table, verify, spec.skip_bad_images)
        grey = images_are_grey(table.paths[i] for i in rows)
        preprocess, augment = _user_images_preprocess(spec, str(labels), 224, grey)
        loader = functools.partial(_load_image, mode="L" if preprocess["channels"] == 1 else "RGB")
        train_tf, eval_tf = train_transform(preprocess, augment), eval_transform(preprocess)
    if skipped:
        shown = ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else "")
        warnings.warn(f"{labels}: left out {len(skipped)} row(s) with unreadable files: {shown}", stacklevel=2)

    def part(indices: list[int], transform, rows_of=table) -> CsvImageDataset:
        return CsvImageDataset(rows_of, indices, transform, loader)

    if table.splits is not None:
        by_split = {s: [i for i in rows if table.splits[i] == s] for s in SPLITS}
        train_rows, val_rows, test_rows = by_split["train"], by_split["val"], by_split["test"]
        if not test_rows:
            raise DataError(f"{labels}: no rows with split 'test'")
        if val_rows and spec.val_split:
            raise DataError(f"{labels}: the split column already names validation rows; drop --val-split")
        note = f"splits from the split column: {len(train_rows)} train / {len(val_rows)} val / {len(test_rows)} test"
    else:
        val_rows = []
        if table.multilabel:
            order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(spec.seed)).tolist()
            n_test = max(1, round(0.2 * len(rows)))
            train_rows = sorted(rows[j] for j in order[n_test:])
            test_rows = sorted(rows[j] for j in order[:n_test])
        else:
            train_idx, test_idx = _stratified_split([table.targets[i] for i in rows], 0.2, spec.seed)
            train_rows, test_rows = [rows[j] for j in train_idx], [rows[j] for j in test_idx]
        note = (
            f"no split column: a seeded split (seed {spec.seed}) of {len(rows)} rows into "
            f"{len(train_rows)} train / {len(test_rows)} test (20%)"
            + ("" if table.multilabel else ", stratified by class")
        )
    check_positives(train_table, train_rows)
    train = part(train_rows, train_tf, train_table)
    # train_eval is where --val-split carves the validation rows from: uncertain labels stay unknown
    train_eval, test = part(train_rows, eval_tf), part(test_rows, eval_tf)
    bundle = _finish(
        replace(spec, val_split=0) if val_rows else spec,
        train, train_eval, test, len(table.class_names), preprocess["channels"], preprocess, augment,
        list(table.class_names),
    )  # fmt: skip
    if val_rows:
        bundle.val = part(val_rows, eval_tf)
    kind = f"multi-label, {len(table.class_names)} classes" if table.multilabel else "single-label"
    uncertain = f"; -1 labels: {_uncertain_words(spec.uncertain)}" if table.multilabel else ""
    bundle.multilabel = table.multilabel
    bundle.notes = [f"{labels}: {kind}{uncertain}; {note}"]
    if not all(kinds):
        bundle.notes += _augment_notes(preprocess, augment)
    else:
        bundle.spatial_dims, bundle.size_origin = 3, size_origin
        window = spec.intensity_window
        scaled = f"clipped to [{window[0]:g}, {window[1]:g}] and scaled to [0, 1]" if window else "z-scored"
        bundle.notes.append(
            f"volumes: {channels} channel(s), each {scaled} on its own, resized to {'x'.join(map(str, size))} "
            f"({'as asked' if spec.volume_size else 'their own size'}); training flips each axis and crops"
        )
    return bundle


def _uncertain_words(uncertain: str) -> str:
    if uncertain == "ignore":
        return "ignore (unknown, masked, in every split)"
    value = {"ones": "positive", "zeros": "negative"}[uncertain]
    return f"{uncertain} ({value} in training rows only; validation and test rows keep them unknown, masked)"


def _digits(spec: DataSpec, augmented: bool) -> DataBundle:
    train, train_eval, test, preprocess = digits_datasets(spec.image_size or 16, augmented)
    augment = "shift" if augmented else "none"
    return _finish(spec, train, train_eval, test, 10, 1, preprocess, augment, [str(i) for i in range(10)])


def _stratified_split(targets: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Hold out ``fraction`` of each class (at least one image per class when it has two)."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    train, test = [], []
    for idx in by_class.values():
        perm = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        n_test = max(1, round(fraction * len(idx))) if len(idx) > 1 else 0
        test += perm[:n_test]
        train += perm[n_test:]
    return sorted(train), sorted(test)


def _finish(
    spec: DataSpec,
    train: Dataset,
    train_eval: Dataset,
    test: Dataset,
    num_classes: int,
    in_channels: int,
    preprocess: dict,
    augment: str,
    class_names: list[str],
) -> DataBundle:
    """Carve out the validation split and make augmentation depend only on (seed, epoch, index)."""
    val = None
    if spec.val_split:
        n = len(train)
        if not 0 < spec.val_split < n:
            raise DataError(f"--val-split must be between 1 and {n - 1} for {spec.name} (got {spec.val_split})")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed)).tolist()
        val = Subset(train_eval, sorted(perm[: spec.val_split]))
        train = Subset(train, sorted(perm[spec.val_split :]))
    if augment != "none":
        train = EpochSeededDataset(train, spec.seed)
    return DataBundle(spec.name, train, test, val, num_classes, in_channels, preprocess, augment, class_names)


DATASETS: dict[str, Callable[[DataSpec], DataBundle]] = {
    "digits": lambda s: _digits(s, augmented=False),
    "digits+": lambda s: _digits(s, augmented=True),
    "cifar10": lambda s: _cifar(s, hundred=False, augmented=False),
    "cifar10+": lambda s: _cifar(s, hundred=False, augmented=True),
    "cifar100": lambda s: _cifar(s, hundred=True, augmented=False),
    "cifar100+": lambda s: _cifar(s, hundred=True, augmented=True),
    "svhn": _svhn,
    "imagenet": _imagenet,
    "imagefolder": _imagefolder,
    "csv": _csv,
}


def build_data(spec: DataSpec) -> DataBundle:
    """Load the named data set; a missing or unreadable one raises :class:`DataError`."""
    loader = DATASETS.get(spec.name)
    if loader is None:
        close = difflib.get_close_matches(spec.name, list(DATASETS), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DataError(f"unknown data set {spec.name!r}; {hint}choose from {', '.join(DATASETS)}")
    if spec.augment is not None and spec.name not in ("imagefolder", "imagenet", "csv"):
        raise DataError(f"augment applies to image folders; {spec.name} keeps the paper's (e.g. cifar10 vs cifar10+)")
    if spec.download:
        os.makedirs(spec.data_dir, exist_ok=True)
    return loader(spec)
