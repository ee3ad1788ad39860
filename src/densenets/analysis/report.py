"""``densenets report``: the paper's Table 2, Table 3 and Figure 3's ResNets, whole, with our
parameter and FLOP counts beside the paper's, and the user's own runs where given."""

from __future__ import annotations

from pathlib import Path

from ..engine.runlog import CONFIG, read_json, read_metrics, reported_result
from ..errors import UserError
from ..models import get_config, list_models
from ..models.resnet_imagenet import torchvision_published
from ..paper import (
    CIFAR_ERRORS,
    FIGURE3_RESNET_TOP1,
    IMAGENET_ERRORS,
    OWN_PAPER_PARAMS_M,
    TABLE2_BASELINES,
    TORCHVISION_GMACS,
    paper_params,
)
from .summary import paper_depth, variant_cost

DATA_LABELS = {"cifar10": "C10", "cifar10+": "C10+", "cifar100": "C100", "cifar100+": "C100+", "svhn": "SVHN"}
CIFAR_SETS = tuple(DATA_LABELS)


def variant_rows() -> list[dict]:
    """Every registered variant: depth, growth rate, our parameters and FLOPs, the paper's count."""
    rows = []
    for name in list_models():
        config = get_config(name)
        params, flops = variant_cost(name)
        rows.append(
            {
                "name": name,
                "depth": paper_depth(config),
                "growth_rate": getattr(config, "growth_rate", None),
                "params": params,
                "paper_params": paper_params(name, config.num_classes),
                "gflops": flops / 1e9,
                "errors": CIFAR_ERRORS.get(name) or IMAGENET_ERRORS.get(name, {}),
                "torchvision_gmacs": TORCHVISION_GMACS.get(name),
            }
        )
    return rows


def run_results(run_dirs: list[str | Path]) -> list[dict]:
    """(model, data, reported test error, folder name) of each run folder: the error the paper's
    protocol reports (:func:`reported_result`: final epoch, or best-validation epoch with a
    validation split)."""
    results = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not (run_dir / CONFIG).is_file():
            raise UserError(f"{run_dir}: not a run folder (no {CONFIG})")
        recipe = read_json(run_dir / CONFIG)["recipe"]
        metrics = read_metrics(run_dir)
        if not metrics:
            raise UserError(f"{run_dir}: no completed epoch yet")
        reported = reported_result(metrics)
        result = {"model": recipe["model"], "data": recipe["data"], "run": run_dir.name}
        if "test_auroc" in reported:  # multi-label: macro AUROC, not an error
            result["auroc"] = reported["test_auroc"]
        else:
            result["error"] = reported["test_error"]
        results.append(result)
    return results


def _result(run: dict, percent: str = "") -> str:
    """A run's reported figure: its test error, or a multi-label run's macro AUROC."""
    if "auroc" in run:
        return (
            "macro AUROC n/a (no class with both labels in the test split)"
            if run["auroc"] is None
            else (f"macro AUROC {run['auroc']:.3f}")
        )
    return f"{run['error']:.2f}{percent}"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _yours(model: str | None, runs: list[dict]) -> str:
    mine = [r for r in runs if r["model"] == model]
    return "; ".join(f"{DATA_LABELS.get(r['data'], r['data'])} {_result(r)} ({r['run']})" for r in mine) or "-"


def _ours(params: int, published: float | None) -> str:
    """Our exact count, with its difference from a rounded published one."""
    if published is None:
        return f"{params:,}"
    return f"{params:,} ({100 * (params / published - 1):+.1f}%)"


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table2(by_name: dict[str, dict], runs: list[dict]) -> list[str]:
    lines = [
        "### Table 2: CIFAR / SVHN test error (%), the paper's numbers; our counts for 10 classes at 32x32",
        "",
        "| model | paper's row | L | k | params (ours) | params (paper) | GFLOPs | C10 | C10+ | C100 | C100+ | SVHN | "
        "your runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in TABLE2_BASELINES:
        name, millions = row["model"], row["params_m"]
        errors = [_fmt(row["errors"][d]) for d in CIFAR_SETS]
        if row.get("note"):  # the paper's "*": C10 and C100 run by the DenseNet authors
            errors[0], errors[2] = (e + "*" if e != "-" else e for e in (errors[0], errors[2]))
        paper = f"{millions}M" if millions else "-"
        if name in OWN_PAPER_PARAMS_M:
            own, source = OWN_PAPER_PARAMS_M[name]
            paper += f" ({source}: {own}M)"
            millions = own
        r = by_name.get(name)
        ours = _ours(r["params"], millions * 1e6 if millions else None) if r else "not built"
        gflops = f"{r['gflops']:.2f}" if r else "-"
        depth = row["depth"] or "-"
        lines.append(_row([name or "", row["method"], depth, "-", ours, paper, gflops, *errors, _yours(name, runs)]))
    for name, errors in CIFAR_ERRORS.items():
        r = by_name[name]
        kind = "DenseNet-BC" if name.startswith("densenet_bc") else "DenseNet"
        match = "" if r["params"] == r["paper_params"] else " (differs)"
        cells = [name, f"{kind} (k={r['growth_rate']})", r["depth"], r["growth_rate"], f"{r['params']:,}",
                 f"{r['paper_params']:,}{match}", f"{r['gflops']:.2f}", *(_fmt(errors[d]) for d in CIFAR_SETS),
                 _yours(name, runs)]  # fmt: skip
        lines.append(_row(cells))
    lines += [
        "",
        "\\* run by the DenseNet authors (the paper's asterisk). The 1202-layer row: Table 2 prints 10.2M; "
        "the network has 19.4M parameters, as He et al. 2016a give.",
    ]
    return lines


def _table3(by_name: dict[str, dict], runs: list[dict]) -> list[str]:
    lines = [
        "### Table 3: ImageNet error (%), the paper's numbers; our counts for 1000 classes at 224x224",
        "",
        "| model | L | k | params (ours) | params (paper) | GFLOPs (ours) | G mult-adds (torchvision) | "
        "top-1 | top-1 10-crop | top-5 | top-5 10-crop | your runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, errors in IMAGENET_ERRORS.items():
        r = by_name[name]
        match = "" if r["params"] == r["paper_params"] else " (differs)"
        errors = [_fmt(errors[k]) for k in ("top1", "top1_10crop", "top5", "top5_10crop")]
        cells = [name, r["depth"], r["growth_rate"], f"{r['params']:,}", f"{r['paper_params']:,}{match}",
                 f"{r['gflops']:.2f}", _fmt(r["torchvision_gmacs"]), *errors, _yours(name, runs)]  # fmt: skip
        lines.append(_row(cells))
    return lines


def _figure3(by_name: dict[str, dict], runs: list[dict]) -> list[str]:
    lines = [
        "### Figure 3's ResNets: ImageNet top-1 single-crop error (%), torchvision's networks",
        "",
        "| model | L | params (ours) | params (torchvision) | GFLOPs (ours) | G mult-adds (torchvision) | "
        "top-1 (Figure 3) | top-1 (torchvision weights) | your runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, top1 in FIGURE3_RESNET_TOP1.items():
        r = by_name[name]
        published = torchvision_published(name)
        lines.append(
            _row(
                [
                    name,
                    r["depth"],
                    f"{r['params']:,}",
                    f"{published['params']:,}",
                    f"{r['gflops']:.2f}",
                    _fmt(published["gmacs"]),
                    _fmt(top1),
                    _fmt(100 - published["acc1"]),
                    _yours(name, runs),
                ]
            )  # fmt: skip
        )
    lines += [
        "",
        "Figure 3 draws the ResNets without printing their errors; they are the single-crop errors of the public "
        "Torch implementation (fb.resnet.torch) the paper trained them with.",
    ]
    return lines


def report_markdown(rows: list[dict] | None = None, runs: list[dict] | None = None) -> str:
    """Tables 2 and 3 whole and Figure 3's ResNets; ``runs`` (from :func:`run_results`) add a column."""
    rows = rows if rows is not None else variant_rows()
    runs = runs or []
    by_name = {r["name"]: r for r in rows}
    lines = _table2(by_name, runs) + [""] + _table3(by_name, runs) + [""] + _figure3(by_name, runs)
    listed = {row["model"] for row in TABLE2_BASELINES} | set(CIFAR_ERRORS) | set(IMAGENET_ERRORS)
    others = [r for r in runs if r["model"] not in listed | set(FIGURE3_RESNET_TOP1)]
    if others:
        lines += ["", "Runs of models the paper does not report:", ""]
        lines += [f"- {r['model']} on {r['data']}: {_result(r, '%')} ({r['run']})" for r in others]
    lines += [
        "",
        "FLOPs count multiply and add separately (2 per multiply-add), convolutions and classifier only, "
        "each transition's 1x1 convolution before its pooling as in the paper.",
    ]
    return "\n".join(lines)
