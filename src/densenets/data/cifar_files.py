"""CIFAR's python-format batch files, read without letting them run code.

The batches are pickles: ``pickle.load`` (what torchvision's CIFAR classes call) runs
whatever a crafted file names. These files hold only a dict of NumPy arrays, lists,
bytes and strings, so the unpickler here admits exactly the globals that rebuild NumPy
arrays and bytes and refuses every other one.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from torchvision.datasets.vision import VisionDataset

from ..errors import DataError

# The globals a CIFAR batch needs: NumPy array/dtype reconstruction (pickle protocols 2
# and 5, NumPy 1 and 2 module names) and the bytes constructor of protocol 2.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _Refused(pickle.UnpicklingError):
    pass


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"it names {module}.{name}, which a CIFAR batch never holds")


def read_batch(path: str | Path, title: str = "CIFAR") -> dict:
    """One CIFAR batch or meta file as a dict; anything else raises :class:`DataError` naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _BatchUnpickler(f, encoding="latin1").load()
    except _Refused as exc:
        raise DataError(f"{path}: refused to load: not a plain {title} batch, it could run code ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except Exception as exc:  # truncated or garbage bytes provoke many types
        raise DataError(f"{path}: not a readable {title} batch file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a {title} batch file (holds a {type(data).__name__}, not a dict)")
    return data


class SafeCifarMixin:
    """Replaces torchvision's CIFAR ``__init__`` (which calls ``pickle.load``) with :func:`read_batch`.

    Mixed into subclasses of ``torchvision.datasets.CIFAR10`` / ``CIFAR100``, whose
    ``__getitem__``, ``download`` and file lists are kept.
    """

    def __init__(self, root, train: bool = True, transform=None, target_transform=None, download: bool = False):
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        folder = Path(self.root, self.base_folder)
        title = "CIFAR-100" if "100" in self.base_folder else "CIFAR-10"
        if not self._check_integrity():
            raise DataError(f"{folder}: {title} files missing; pass --download")
        arrays, targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            path = folder / name
            entry = read_batch(path, title)
            try:
                arrays.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
            except (KeyError, ValueError, TypeError) as exc:
                raise DataError(f"{path}: not a {title} batch file ({type(exc).__name__}: {exc})") from exc
            targets.extend(int(t) for t in labels)
        self.data = np.vstack(arrays).transpose(0, 2, 3, 1)  # (N, 32, 32, 3) uint8
        self.targets = targets
        meta_path = folder / self.meta["filename"]
        try:
            self.classes = [str(c) for c in read_batch(meta_path, title)[self.meta["key"]]]
        except KeyError as exc:
            raise DataError(f"{meta_path}: no {self.meta['key']} in this {title} meta file") from exc
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
