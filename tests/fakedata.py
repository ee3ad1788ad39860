"""Tiny data sets written in the real on-disk formats, so torchvision's own loaders read them.

Images carry a class-dependent signal (a bright band whose position and colour encode
the class) so that a few training steps beat chance.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def class_images(n: int, num_classes: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size, 3) uint8 noise images tinted with a per-class colour, and their labels.

    The colour survives crops and flips, so even a few augmented steps learn it.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    levels = np.array([20, 75, 130, 185, 240])
    palette = np.array([[levels[(c // 25) % 5], levels[(c // 5) % 5], levels[c % 5]] for c in range(num_classes)])
    if num_classes <= 10:  # ten well-separated colours
        corners = [
            (0, 0, 0),
            (4, 4, 4),
            (4, 0, 0),
            (0, 4, 0),
            (0, 0, 4),
            (4, 4, 0),
            (4, 0, 4),
            (0, 4, 4),
            (2, 2, 2),
            (2, 0, 4),
        ]
        palette = levels[np.array(corners[:num_classes])]
    noise = rng.integers(-20, 21, size=(n, size, size, 3))
    images = np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_cifar10(root: Path, n_train: int = 100, n_test: int = 40, names: list[str] | None = None) -> Path:
    """CIFAR-10's python layout; class names ``class0``... unless ``names`` (e.g. CIFAR-10's own)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = class_images(n_train + n_test, 10)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # CIFAR stores CHW rows
    chunks = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(chunks, start=1):
        _pickle(folder / f"data_batch_{i}", {"data": flat[idx], "labels": labels[idx].tolist()})
    test = np.arange(n_train, n_train + n_test)
    _pickle(folder / "test_batch", {"data": flat[test], "labels": labels[test].tolist()})
    _pickle(folder / "batches.meta", {"label_names": list(names or [f"class{i}" for i in range(10)])})
    return folder


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100) -> Path:
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = class_images(n_train + n_test, 100)
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    _pickle(folder / "train", {"data": flat[:n_train], "fine_labels": labels[:n_train].tolist()})
    _pickle(folder / "test", {"data": flat[n_train:], "fine_labels": labels[n_train:].tolist()})
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)]})
    return folder


def write_svhn(root: Path, n: int = 30) -> Path:
    from scipy.io import savemat

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, seed in (("train", 0), ("extra", 1), ("test", 2)):
        images, labels = class_images(n, 10, seed=seed)
        y = np.where(labels == 0, 10, labels).reshape(-1, 1)  # SVHN labels the digit 0 as 10
        savemat(root / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})
    return root


def write_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 40, split: bool = True) -> Path:
    """``root/train/<class>/*.png`` + ``root/val/<class>/*.png`` (or class folders directly)."""
    root = Path(root)
    parts = {"train": per_class, "val": max(per_class // 2, 1)} if split else {".": per_class}
    for part, n in parts.items():
        images, labels = class_images(n * classes, classes, size=size, seed=len(part))
        for i, (img, c) in enumerate(zip(images, labels, strict=True)):
            folder = root / part / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"img{i}.png")
    return root


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
