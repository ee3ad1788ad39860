"""Figures drawn from run folders and the paper's numbers.

``plot_runs``: error curves, error against parameters and FLOPs, and test accuracy against
training FLOPs and wall time of any runs; for multi-label runs, macro AUROC curves.
``figure3`` / ``figure4``: the paper's Figures 3 and 4 laid out as its panels -- ImageNet
top-1 error of DenseNets and ResNets against parameters and FLOPs (3); C10+ error against
parameters for the DenseNet variants, DenseNet-BC against the pre-activation ResNet, and the
training/test curves of runs side by side (4) -- with the user's runs drawn over them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..engine.flops import MILESTONES
from ..engine.runlog import CONFIG, SUMMARY, read_json, read_metrics, reported_result
from ..errors import UserError
from ..models import build_model, config_from_dict
from ..paper import CIFAR_ERRORS, FIGURE3_RESNET_TOP1, IMAGENET_ERRORS, TABLE2_BASELINES
from .summary import count_flops, count_parameters, variant_cost


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_run(run_dir: str | Path) -> dict:
    """A run folder's config, per-epoch metrics and summary (what every figure is drawn from)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir}: not a run folder (no {CONFIG})")
    config = read_json(run_dir / CONFIG)
    metrics = read_metrics(run_dir)
    if not metrics:
        raise UserError(f"{run_dir}: no completed epoch in metrics.jsonl yet")
    summary = read_json(run_dir / SUMMARY) if (run_dir / SUMMARY).is_file() else {}
    return {"dir": run_dir, "config": config, "metrics": metrics, "summary": summary}


def _label(run: dict) -> str:
    return f"{run['config']['recipe']['model']} ({run['dir'].name})"


def plot_curves(runs: list[dict], path: Path) -> Path:
    """Training (dashed) and test (solid) error per epoch for each run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        epochs = [m["epoch"] for m in run["metrics"]]
        line = ax.plot(epochs, [m["test_error"] for m in run["metrics"]], label=f"{_label(run)} test")[0]
        ax.plot(epochs, [m["train_error"] for m in run["metrics"]], "--", color=line.get_color(), label="train")
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("error (%)")
    ax.set_yscale("log")
    data = {run["config"]["recipe"]["data"] for run in runs}
    ax.set_title(f"Training and test error ({', '.join(sorted(data))})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def is_multilabel(run: dict) -> bool:
    """A multi-label run logs macro AUROC (``test_auroc``), not an error."""
    return "test_auroc" in run["metrics"][-1]


def plot_auroc_curves(runs: list[dict], path: Path) -> Path:
    """Multi-label runs: test (solid) and validation (dotted) macro AUROC per epoch, training loss on the right."""
    plt = _pyplot()
    fig, (ax, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for run in runs:
        epochs = [m["epoch"] for m in run["metrics"]]
        line = ax.plot(epochs, [m["test_auroc"] for m in run["metrics"]], label=f"{_label(run)} test")[0]
        if any("val_auroc" in m for m in run["metrics"]):
            ax.plot(epochs, [m.get("val_auroc") for m in run["metrics"]], ":", color=line.get_color(), label="val")
        right.plot(epochs, [m["train_loss"] for m in run["metrics"]], "--", color=line.get_color(), label=_label(run))
        right.plot(epochs, [m["test_loss"] for m in run["metrics"]], color=line.get_color())
    for axis in (ax, right):
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    ax.set_ylabel("macro AUROC")
    ax.set_title("Multi-label: macro AUROC per epoch")
    right.set_ylabel("masked BCE loss (train dashed, test solid)")
    right.set_title("Loss")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def run_cost(run: dict) -> tuple[int, int]:
    """(parameters, FLOPs per image) of a run's model, from its config (built on the meta device)."""
    config = config_from_dict(run["config"]["model"])
    with torch.device("meta"):
        model = build_model(config)
    size = run["config"]["data"]["preprocess"]["crop"]
    return count_parameters(model), count_flops(model, size)


def _reported_error(run: dict) -> float:
    """The test error the paper's protocol reports for this run (:func:`reported_result`)."""
    return reported_result(run["metrics"])["test_error"]


def paper_points(data: str) -> list[dict]:
    """Table 2 results for a CIFAR/SVHN data set name (DenseNets and the baselines built here),
    with each model's parameters and FLOPs."""
    classes = 100 if data.startswith("cifar100") else 10
    named = [(row["model"], row["errors"]) for row in TABLE2_BASELINES if row["model"]]
    points = []
    for name, errors in [*named, *CIFAR_ERRORS.items()]:
        error = errors.get(data)
        if error is None:
            continue
        params, flops = variant_cost(name, classes)
        points.append({"name": name, "error": error, "params": params, "flops": flops})
    return points


def run_point(run: dict) -> dict:
    """A run's point in Figures 3/4: its cost and the test error the paper's protocol reports
    (the final epoch; the best-validation epoch for a run with a validation split, as SVHN)."""
    params, flops = run_cost(run)
    reported = reported_result(run["metrics"])
    label = f"{_label(run)}, {run['config']['recipe']['data']}"
    if reported["rule"] != "final epoch":
        label += f" ({reported['rule']} {reported['epoch']})"
    return {"label": label, "params": params, "flops": flops, "error": reported["test_error"]}


def plot_error_vs_cost(runs: list[dict], out_dir: Path) -> list[Path]:
    """Reported test error against parameters and against FLOPs; the paper's Table 2 overlaid.

    Each run's error is the one the paper would report (:func:`reported_result`).
    """
    plt = _pyplot()
    datasets = sorted({run["config"]["recipe"]["data"] for run in runs})
    ours = [run_point(run) for run in runs]
    paths = []
    for key, xlabel in (("params", "parameters"), ("flops", "FLOPs per image")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for data in datasets:
            pts = paper_points(data)
            if pts:
                ax.plot([p[key] for p in pts], [p["error"] for p in pts], "s", mfc="none", color="gray",
                        label=f"paper, {data}")  # fmt: skip
                for p in pts:
                    ax.annotate(p["name"].replace("densenet", "dn"), (p[key], p["error"]), fontsize=6, color="gray")
        for point in ours:
            ax.plot(point[key], point["error"], "o", label=point["label"])
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test error (%)")
        ax.set_title(f"Test error vs {xlabel}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"error_vs_{key}.png"
        fig.savefig(path, dpi=130)
        plt.close(fig)
        paths.append(path)
    return paths


def accuracy_curve(run: dict) -> dict:
    """A run's test accuracy (%) after each epoch against its cumulative training FLOPs and wall time."""
    metrics = run["metrics"]
    return {
        "train_flops": [m["train_flops"] for m in metrics],
        "elapsed_s": [m["elapsed_s"] for m in metrics],
        "test_accuracy": [100.0 - m["test_error"] for m in metrics],
    }


def time_to_accuracy_figure(runs: list[dict]):
    """Test accuracy against cumulative training FLOPs (left) and wall time (right), one line per run.

    Runs recorded before FLOPs were counted (no ``train_flops`` in metrics.jsonl) are left out, named in the title.
    """
    plt = _pyplot()
    counted = [run for run in runs if all("train_flops" in m for m in run["metrics"])]
    left_out = [_label(run) for run in runs if run not in counted]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in counted:
        curve = accuracy_curve(run)
        for ax, key in zip(axes, ("train_flops", "elapsed_s"), strict=True):
            ax.plot(curve[key], curve["test_accuracy"], "o-", ms=3, label=_label(run))
    for ax, xlabel in zip(axes, ("training FLOPs (forward + backward)", "wall time since training started (s)"),
                          strict=True):  # fmt: skip
        for level in MILESTONES:
            ax.axhline(level, color="gray", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%), evaluated each epoch for the curve only")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    title = "Test accuracy against compute and time"
    if left_out:
        title += f" (left out, no FLOPs recorded: {', '.join(left_out)})"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_time_to_accuracy(runs: list[dict], path: Path) -> Path:
    fig = time_to_accuracy_figure(runs)
    fig.savefig(path, dpi=130)
    _pyplot().close(fig)
    return path


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """All figures for the given runs, written to ``out_dir``."""
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    multilabel = [run for run in runs if is_multilabel(run)]
    single = [run for run in runs if not is_multilabel(run)]
    paths = [plot_auroc_curves(multilabel, out_dir / "auroc_curves.png")] if multilabel else []
    if single:
        paths += [plot_curves(single, out_dir / "error_curves.png"), *plot_error_vs_cost(single, out_dir)]
        paths.append(plot_time_to_accuracy(single, out_dir / "accuracy_vs_compute.png"))
    return paths


# ---------------------------------------------------------------------------------------
# The paper's Figures 3 and 4
# ---------------------------------------------------------------------------------------


def _densenet_kind(config: dict) -> str:
    """DenseNet, DenseNet-B, -C or -BC, from a run's model config (Figure 4 left's legend)."""
    suffix = ("B" if config.get("bottleneck") else "") + ("C" if config.get("compression", 1.0) < 1 else "")
    return "DenseNet" + (f"-{suffix}" if suffix else "")


def _paper_line(ax, names: list[str], errors: dict[str, float], key: str, scale: float, label: str, style: str):
    """The paper's points of one family, joined in order of size as the paper draws them."""
    cost = {n: (variant_cost(n)[0] if key == "params" else variant_cost(n)[1] / 2) / scale for n in names}
    points = sorted((cost[n], errors[n], n) for n in names)
    ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
    for x, error, name in points:
        ax.annotate(name, (x, error), fontsize=6, xytext=(3, 3), textcoords="offset points")


def figure3(runs: list[dict]) -> tuple[object, list[str]]:
    """Figure 3: ImageNet top-1 single-crop error against parameters (left) and against FLOPs
    (right, multiply-adds as the paper counts them), DenseNets vs ResNets; ImageNet runs on top.

    Returns the matplotlib figure and notes on runs left out.
    """
    plt = _pyplot()
    densenets = {n: e["top1"] for n, e in IMAGENET_ERRORS.items() if n != "densenet161"}  # 161: not in the figure
    mine = [r for r in runs if r["config"]["recipe"]["data"] == "imagenet"]
    notes = [f"figure 3 is ImageNet: left out {_label(r)} ({r['config']['recipe']['data']})" for r in runs
             if r not in mine]  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, scale, xlabel in (
        (axes[0], "params", 1e6, "parameters (M)"),
        (axes[1], "flops", 1e9, "FLOPs (G multiply-adds)"),
    ):
        _paper_line(ax, list(FIGURE3_RESNET_TOP1), FIGURE3_RESNET_TOP1, key, scale, "ResNets (paper)", "s-")
        _paper_line(ax, list(densenets), densenets, key, scale, "DenseNet-BC (paper)", "o-")
        for run in mine:
            params, flops = run_cost(run)
            ax.plot((params if key == "params" else flops / 2) / scale, _reported_error(run), "*", ms=10,
                    label=f"{_label(run)}, yours")  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation error (%), single-crop top-1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Figure 3: ImageNet top-1 error, DenseNets vs ResNets")
    fig.tight_layout()
    return fig, notes


def figure4(runs: list[dict]) -> tuple[object, list[str]]:
    """Figure 4: C10+ test error against parameters for the DenseNet variants (left) and for
    DenseNet-BC vs the pre-activation ResNet (middle), from Table 2 with the user's C10+ runs;
    training loss and test error per epoch of the given runs side by side (right).

    Returns the matplotlib figure and notes on runs left out of the left and middle panels.
    """
    if not runs:
        raise UserError("figure 4's right panel draws training curves: give run folders "
                        "(e.g. a densenet_bc100_k12 run and a preact_resnet1001 run)")  # fmt: skip
    plt = _pyplot()
    c10 = {n: e["cifar10+"] for n, e in CIFAR_ERRORS.items() if e["cifar10+"] is not None}
    plain = [n for n in c10 if not n.startswith("densenet_bc")]
    bc = [n for n in c10 if n.startswith("densenet_bc")]
    preact = {row["model"]: row["errors"]["cifar10+"] for row in TABLE2_BASELINES
              if row["model"] and row["model"].startswith("preact_")}  # fmt: skip
    on_c10 = [r for r in runs if r["config"]["recipe"]["data"] == "cifar10+"]
    notes = [f"figure 4 left/middle are C10+: left out {_label(r)} ({r['config']['recipe']['data']})" for r in runs
             if r not in on_c10]  # fmt: skip
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))

    _paper_line(left, plain, c10, "params", 1e6, "DenseNet (paper)", "o-")
    _paper_line(left, bc, c10, "params", 1e6, "DenseNet-BC (paper)", "s-")
    _paper_line(middle, bc, c10, "params", 1e6, "DenseNet-BC (paper)", "s-")
    _paper_line(middle, list(preact), preact, "params", 1e6, "ResNet, pre-activation (paper)", "^-")
    for run in on_c10:
        model = run["config"]["model"]
        params = run_cost(run)[0] / 1e6
        is_densenet = model.get("family", "densenet") == "densenet"
        if is_densenet:
            left.plot(params, _reported_error(run), "*", ms=10, label=f"{_label(run)}, {_densenet_kind(model)}")
        if (is_densenet and model.get("bottleneck") and model.get("compression", 1) < 1) or not is_densenet:
            middle.plot(params, _reported_error(run), "*", ms=10, label=f"{_label(run)}, yours")
    for ax, title in ((left, "Parameter efficiency of DenseNet variants"), (middle, "DenseNet-BC vs ResNet")):
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel("C10+ test error (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)

    loss_axis = right.twinx()
    for run in runs:
        epochs = [m["epoch"] for m in run["metrics"]]
        line = right.plot(epochs, [m["test_error"] for m in run["metrics"]], label=f"{_label(run)} test error")[0]
        loss_axis.plot(epochs, [m["train_loss"] for m in run["metrics"]], "--", color=line.get_color(),
                       label=f"{_label(run)} training loss")  # fmt: skip
    right.set_xlabel("epoch")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_ylabel("test error (%), solid")
    loss_axis.set_ylabel("training loss, dashed")
    data = ", ".join(sorted({r["config"]["recipe"]["data"] for r in runs}))
    right.set_title(f"Training and test curves ({data})", fontsize=10)
    right.grid(alpha=0.3)
    handles = right.get_legend_handles_labels()
    extra = loss_axis.get_legend_handles_labels()
    right.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=6)
    fig.suptitle("Figure 4: C10+ error against parameters; training curves")
    fig.tight_layout()
    return fig, notes


FIGURES = {3: figure3, 4: figure4}


def plot_figure(number: int, run_dirs: list[str | Path], out_dir: str | Path) -> tuple[Path, list[str]]:
    """Write ``figure<number>.png`` to ``out_dir``; returns its path and notes on runs left out."""
    if number not in FIGURES:
        raise UserError(f"no figure {number}: choose from {', '.join(map(str, FIGURES))} (Figure 5: densenets analyze)")
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, notes = FIGURES[number](runs)
    path = out_dir / f"figure{number}.png"
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path, notes
