"""Preprocessing as the paper describes it, rebuilt from a plain dict.

Every data set records a ``preprocess`` dict (mean, std, sizes, channels) in the run's
config so that evaluation and prediction rebuild exactly the test-time transform.
"""

from __future__ import annotations

import torch
from torchvision import transforms as T

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# Principal components of ImageNet RGB pixels (the fb.resnet.torch values the Lua code uses).
_PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
_PCA_EIGVEC = torch.tensor(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)


def channel_statistics(mean, std, channels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean/std for ``channels``-channel images from another count's (RGB weights' statistics
    for grey images): one channel takes the channels' averages, others repeat them cyclically.
    ``models.channels`` adapts the stem's filters to match (one channel: exact up to the means' spread)."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) == channels:
        return mean, std
    if channels == 1:
        return [sum(mean) / len(mean)], [sum(std) / len(std)]
    return [mean[i % len(mean)] for i in range(channels)], [std[i % len(std)] for i in range(channels)]


# What the ImageNet augmentation does to grey images, for the run's first lines.
GREY_IMAGENET = "random-resized crop, flip, brightness and contrast (no saturation or PCA lighting: grey images)"


class Lighting:
    """AlexNet-style PCA lighting noise on a (3, H, W) tensor in [0, 1]."""

    def __init__(self, alphastd: float = 0.1) -> None:
        self.alphastd = alphastd

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = (_PCA_EIGVEC * alpha * _PCA_EIGVAL).sum(dim=1)
        return img + rgb.view(3, 1, 1)

    def __repr__(self) -> str:
        return f"Lighting(alphastd={self.alphastd})"


def train_transform(preprocess: dict, augment: str) -> T.Compose:
    """``augment``: ``"none"``, ``"crop"`` (normalise, zero-pad 4, random crop), ``"crop-flip"``
    (and flip; also called ``"cifar"``) or ``"imagenet"`` (random-resized crop at scale 0.08-1,
    flip, colour; on grey images brightness and contrast only: see :data:`GREY_IMAGENET`)."""
    size = preprocess["crop"]
    normalize = T.Normalize(preprocess["mean"], preprocess["std"])
    if augment == "imagenet" and preprocess["channels"] == 1:
        # saturation and PCA lighting are colour operations; a grey image has no colour to vary
        steps = [T.Grayscale(1), T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ColorJitter(0.4, 0.4)]
        return T.Compose([*steps, T.ToTensor(), normalize])
    if augment == "imagenet":
        return T.Compose(
            [
                T.RandomResizedCrop(size),
                T.RandomHorizontalFlip(),
                T.ColorJitter(0.4, 0.4, 0.4),
                T.ToTensor(),
                Lighting(0.1),
                normalize,
            ]
        )
    steps = [T.Grayscale(1)] if preprocess["channels"] == 1 else []
    steps += [*_resize_steps(preprocess), T.ToTensor(), normalize]
    if augment in ("crop", "crop-flip", "cifar"):
        # The authors' order (fb.resnet.torch): normalise first, then pad with zeros and crop,
        # so the 4-pixel border is the mean colour, not black.
        steps.append(T.RandomCrop(size, padding=4, fill=0))
    if augment in ("crop-flip", "cifar"):
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps)


def eval_transform(preprocess: dict) -> T.Compose:
    """Test-time transform: resize + centre crop where the data set needs it, then normalise."""
    steps = [T.Grayscale(1)] if preprocess["channels"] == 1 else [T.Lambda(_to_rgb)]
    steps += _resize_steps(preprocess)
    return T.Compose([*steps, T.ToTensor(), T.Normalize(preprocess["mean"], preprocess["std"])])


def image_transform(preprocess: dict) -> T.Compose:
    """For arbitrary image files (predict): any size or mode to the model's input.

    Data sets whose test images already have the input size (CIFAR, SVHN) record no
    resize; a file of another size is then scaled (shorter side) and centre-cropped.
    """
    if preprocess.get("resize"):
        return eval_transform(preprocess)
    return eval_transform({**preprocess, "resize": preprocess["crop"]})


def ten_crop_transform(preprocess: dict) -> T.Compose:
    """Resize, then the four corner + centre crops and their mirrors: (10, C, H, W)."""
    normalize = T.Normalize(preprocess["mean"], preprocess["std"])
    steps = [T.Grayscale(1)] if preprocess["channels"] == 1 else [T.Lambda(_to_rgb)]
    if preprocess.get("resize"):
        steps.append(T.Resize(preprocess["resize"]))
    return T.Compose(
        [
            *steps,
            T.TenCrop(preprocess["crop"]),
            _StackCrops(normalize),
        ]
    )


class _StackCrops:
    """PIL crops -> one normalised (n_crops, C, H, W) tensor (picklable for workers)."""

    def __init__(self, normalize: T.Normalize) -> None:
        self.normalize = normalize

    def __call__(self, crops) -> torch.Tensor:
        return torch.stack([self.normalize(T.functional.to_tensor(c)) for c in crops])


def _resize_steps(preprocess: dict) -> list:
    if preprocess.get("resize"):
        return [T.Resize(preprocess["resize"]), T.CenterCrop(preprocess["crop"])]
    return []


def _to_rgb(img):
    return img.convert("RGB") if getattr(img, "mode", "RGB") != "RGB" else img


_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "nearest": T.InterpolationMode.NEAREST,
}


def transforms_from_config(config: dict, train: bool = False) -> T.Compose:
    """torchvision transforms for a ``data_config`` dict (input_size, interpolation, mean, std, crop_pct).

    Test: resize the shorter side to ``size / crop_pct``, centre-crop ``size``. Train:
    random-resized crop and flip. One-channel models get greyscale, others RGB, so the
    tensor always has the channels the model takes.
    """
    channels, size = int(config["input_size"][0]), int(config["input_size"][-1])
    mode = _INTERPOLATION.get(config.get("interpolation", "bilinear"), T.InterpolationMode.BILINEAR)
    steps = [T.Grayscale(1)] if channels == 1 else [T.Lambda(_to_rgb)]
    if train:
        steps += [T.RandomResizedCrop(size, interpolation=mode), T.RandomHorizontalFlip()]
    else:
        pct = float(config.get("crop_pct", 1.0))
        steps += [T.Resize(round(size / pct), interpolation=mode), T.CenterCrop(size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(config["mean"], config["std"])])
