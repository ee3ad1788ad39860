"""``densenets report``: every named variant, our parameters and FLOPs next to the paper's."""

from __future__ import annotations

from ..models import create_model, list_models
from ..paper import CIFAR_ERRORS, IMAGENET_ERRORS, TORCHVISION_GMACS, paper_params
from .summary import count_flops, count_parameters, default_input_size, paper_depth


def variant_rows() -> list[dict]:
    rows = []
    for name in list_models():
        model = create_model(name)
        size = default_input_size(model.config)
        params = count_parameters(model)
        rows.append(
            {
                "name": name,
                "depth": paper_depth(model.config),
                "growth_rate": model.config.growth_rate,
                "params": params,
                "paper_params": paper_params(name, model.config.num_classes),
                "input_size": size,
                "gflops": count_flops(model, size) / 1e9,
                "errors": CIFAR_ERRORS.get(name) or IMAGENET_ERRORS.get(name, {}),
                "torchvision_gmacs": TORCHVISION_GMACS.get(name),
            }
        )
    return rows


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _row(r: dict, values: list) -> str:
    """One table row: the model's own columns, then ``values`` formatted (a dash when unknown)."""
    match = "" if r["params"] == r["paper_params"] else " (differs)"
    cells = [r["name"], r["depth"], r["growth_rate"], f"{r['params']:,}", f"{r['paper_params']:,}{match}"]
    cells += [f"{r['gflops']:.2f}", *(_fmt(v) for v in values)]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report_markdown(rows: list[dict] | None = None) -> str:
    rows = rows if rows is not None else variant_rows()
    cifar = [r for r in rows if r["name"] in CIFAR_ERRORS]
    imagenet = [r for r in rows if r["name"] in IMAGENET_ERRORS]
    lines = [
        "### CIFAR / SVHN models (10 classes, 32x32) and the paper's Table 2 test errors (%)",
        "",
        "| model | L | k | params (ours) | params (paper) | GFLOPs | C10 | C10+ | C100 | C100+ | SVHN |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in cifar:
        lines.append(_row(r, [r["errors"][k] for k in ("cifar10", "cifar10+", "cifar100", "cifar100+", "svhn")]))
    lines += [
        "",
        "### ImageNet models (1000 classes, 224x224) and the paper's Table 3 errors (%)",
        "",
        "| model | L | k | params (ours) | params (paper) | GFLOPs (ours) | G mult-adds (torchvision) | "
        "top-1 | top-1 10-crop | top-5 | top-5 10-crop |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in imagenet:
        errors = [r["errors"][k] for k in ("top1", "top1_10crop", "top5", "top5_10crop")]
        lines.append(_row(r, [r["torchvision_gmacs"], *errors]))
    lines += [
        "",
        "FLOPs count multiply and add separately (2 per multiply-add), convolutions and classifier only, "
        "each transition's 1x1 convolution before its pooling as in the paper.",
    ]
    return "\n".join(lines)
