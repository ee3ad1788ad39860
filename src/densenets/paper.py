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


# ---------------------------------------------------------------------------------------
# The baselines (Table 2, Figures 3 and 4)
# ---------------------------------------------------------------------------------------

_SETS = ("cifar10", "cifar10+", "cifar100", "cifar100+", "svhn")


def _errors(*values: float | None) -> dict[str, float | None]:
    return dict(zip(_SETS, values, strict=True))


# Table 2, every row above the DenseNets, in the paper's order: method, depth, parameters (M,
# as printed), errors (C10, C10+, C100, C100+, SVHN; None where the cell is empty), and the
# registered model that builds it (None: not built here). "*" in the paper (C10/C100 of the
# pre-activation ResNets: run by the DenseNet authors) is kept as a note.
TABLE2_BASELINES: list[dict] = [
    {"method": "Network in Network", "depth": None, "params_m": None, "model": None,
     "errors": _errors(10.41, 8.81, 35.68, None, 2.35)},
    {"method": "All-CNN", "depth": None, "params_m": None, "model": None,
     "errors": _errors(9.08, 7.25, None, 33.71, None)},
    {"method": "Deeply Supervised Net", "depth": None, "params_m": None, "model": None,
     "errors": _errors(9.69, 7.97, None, 34.57, 1.92)},
    {"method": "Highway Network", "depth": None, "params_m": None, "model": None,
     "errors": _errors(None, 7.72, None, 32.39, None)},
    {"method": "FractalNet", "depth": 21, "params_m": 38.6, "model": None,
     "errors": _errors(10.18, 5.22, 35.34, 23.30, 2.01)},
    {"method": "FractalNet with Dropout/Drop-path", "depth": 21, "params_m": 38.6, "model": None,
     "errors": _errors(7.33, 4.60, 28.20, 23.73, 1.87)},
    {"method": "ResNet (He et al. 2016a)", "depth": 110, "params_m": 1.7, "model": "resnet110",
     "errors": _errors(None, 6.61, None, None, None)},
    {"method": "ResNet (reported by Huang et al. 2016)", "depth": 110, "params_m": 1.7, "model": "resnet110",
     "errors": _errors(13.63, 6.41, 44.74, 27.22, 2.01)},
    {"method": "ResNet with Stochastic Depth", "depth": 110, "params_m": 1.7, "model": "resnet110_sd",
     "errors": _errors(11.66, 5.23, 37.80, 24.58, 1.75)},
    {"method": "ResNet with Stochastic Depth", "depth": 1202, "params_m": 10.2, "model": "resnet1202_sd",
     "errors": _errors(None, 4.91, None, None, None)},
    {"method": "Wide ResNet", "depth": 16, "params_m": 11.0, "model": "wrn16_8",
     "errors": _errors(None, 4.81, None, 22.07, None)},
    {"method": "Wide ResNet", "depth": 28, "params_m": 36.5, "model": "wrn28_10",
     "errors": _errors(None, 4.17, None, 20.50, None)},
    {"method": "Wide ResNet with Dropout", "depth": 16, "params_m": 2.7, "model": "wrn16_4_dropout",
     "errors": _errors(None, None, None, None, 1.64)},
    {"method": "ResNet (pre-activation)", "depth": 164, "params_m": 1.7, "model": "preact_resnet164",
     "errors": _errors(11.26, 5.46, 35.58, 24.33, None), "note": "C10/C100 run by the DenseNet authors"},
    {"method": "ResNet (pre-activation)", "depth": 1001, "params_m": 10.2, "model": "preact_resnet1001",
     "errors": _errors(10.56, 4.62, 33.47, 22.71, None), "note": "C10/C100 run by the DenseNet authors"},
]  # fmt: skip

# Table 2 prints 10.2M for the 1202-layer ResNet; that network (n = 200 basic units of 16/32/64
# maps) has 19.4M parameters, the figure He et al. 2016a give for it (their Table 6).
OWN_PAPER_PARAMS_M = {"resnet1202": (19.4, "He et al. 2016a"), "resnet1202_sd": (19.4, "He et al. 2016a")}

# Figure 3: ImageNet top-1 single-crop validation error (%) of the ResNets. The paper draws these
# points without printing them; its ResNets are the public Torch implementation
# (fb.resnet.torch), whose published single-crop errors these are.
FIGURE3_RESNET_TOP1 = {"resnet34": 26.73, "resnet50": 24.01, "resnet101": 22.44, "resnet152": 22.16}


def baseline_params_m(name: str) -> float | None:
    """Table 2's rounded parameter count (millions) for a registered baseline, if it has a row."""
    return next((row["params_m"] for row in TABLE2_BASELINES if row["model"] == name), None)


def paper_params_rounded(name: str, num_classes: int) -> tuple[int, str] | None:
    """(count, source) of a baseline's published rounded parameter count, for 10 or 100 classes.

    The baselines' own papers' figure wins where Table 2 disagrees with it (ResNet-1202).
    """
    if num_classes not in (10, 100):
        return None
    if name in OWN_PAPER_PARAMS_M:
        millions, source = OWN_PAPER_PARAMS_M[name]
        return round(millions * 1e6), source
    millions = baseline_params_m(name)
    return (round(millions * 1e6), "Table 2") if millions is not None else None
