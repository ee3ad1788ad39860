"""The numbers the paper reports (Huang et al., CVPR 2017), as data.

Used by ``densenets summary``, ``densenets report`` and the figures that overlay the
paper's points on a user's own runs. Source: the project's spec (shared/paper.md).
"""

from __future__ import annotations

# Exact parameter counts, 10 / 100 classes for the CIFAR models, 1000 for ImageNet.
PARAMS_10 = {
    "densenet40_k12": 1_019_722,
    "densenet100_k12": 6_979_642,
    "densenet100_k24": 27_249_082,
    "densenet_bc100_k12": 769_162,
    "densenet_bc250_k24": 15_324_406,
    "densenet_bc190_k40": 25_624_430,
}
PARAMS_100 = {
    "densenet40_k12": 1_060_132,
    "densenet100_k12": 7_084_852,
    "densenet100_k24": 27_457_972,
    "densenet_bc100_k12": 800_032,
    "densenet_bc250_k24": 15_480_556,
    "densenet_bc190_k40": 25_821_620,
}
PARAMS_IMAGENET = {
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "densenet264": 33_337_704,
    "densenet161": 28_681_000,
}

# Table 2: test error (%) per data set; None where the paper has no number.
CIFAR_ERRORS: dict[str, dict[str, float | None]] = {
    "densenet40_k12": {"cifar10": 7.00, "cifar10+": 5.24, "cifar100": 27.55, "cifar100+": 24.42, "svhn": 1.79},
    "densenet100_k12": {"cifar10": 5.77, "cifar10+": 4.10, "cifar100": 23.79, "cifar100+": 20.20, "svhn": 1.67},
    "densenet100_k24": {"cifar10": 5.83, "cifar10+": 3.74, "cifar100": 23.42, "cifar100+": 19.25, "svhn": 1.59},
    "densenet_bc100_k12": {"cifar10": 5.92, "cifar10+": 4.51, "cifar100": 24.15, "cifar100+": 22.27, "svhn": 1.76},
    "densenet_bc250_k24": {"cifar10": 5.19, "cifar10+": 3.62, "cifar100": 19.64, "cifar100+": 17.60, "svhn": 1.74},
    "densenet_bc190_k40": {"cifar10": None, "cifar10+": 3.46, "cifar100": None, "cifar100+": 17.18, "svhn": None},
}

# Table 3: ImageNet top-1 / top-5 error (%), single-crop and 10-crop.
IMAGENET_ERRORS: dict[str, dict[str, float | None]] = {
    "densenet121": {"top1": 25.02, "top1_10crop": 23.61, "top5": 7.71, "top5_10crop": 6.66},
    "densenet169": {"top1": 23.80, "top1_10crop": 22.08, "top5": 6.85, "top5_10crop": 5.92},
    "densenet201": {"top1": 22.58, "top1_10crop": 21.46, "top5": 6.34, "top5_10crop": 5.54},
    "densenet264": {"top1": 22.15, "top1_10crop": 20.80, "top5": 6.12, "top5_10crop": 5.29},
    "densenet161": {"top1": 22.2, "top1_10crop": None, "top5": None, "top5_10crop": None},
}

# torchvision's published multiply-adds (G) for its ImageNet weights.
TORCHVISION_GMACS = {"densenet121": 2.834, "densenet161": 7.728, "densenet169": 3.36, "densenet201": 4.291}


def paper_params(name: str, num_classes: int) -> int | None:
    """The paper's exact parameter count for a named variant, if it gives one."""
    if name in PARAMS_IMAGENET:
        return PARAMS_IMAGENET[name] if num_classes == 1000 else None
    if num_classes == 10:
        return PARAMS_10.get(name)
    if num_classes == 100:
        return PARAMS_100.get(name)
    return None
