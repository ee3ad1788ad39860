"""Data sets of the paper (and the bundled digits), loaded with torchvision's classes."""

from .datasets import DATASETS, DataBundle, DataSpec, build_data
from .transforms import eval_transform, ten_crop_transform, train_transform

__all__ = [
    "DATASETS",
    "DataBundle",
    "DataSpec",
    "build_data",
    "eval_transform",
    "ten_crop_transform",
    "train_transform",
]
