"""Figures drawn from run folders: error curves (Figure 4 right) and error against
parameters and FLOPs across runs (Figures 3 and 4 left), with the paper's points."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..engine.runlog import CONFIG, SUMMARY, read_json, read_metrics
from ..errors import UserError
from ..models import DenseNetConfig, create_model
from ..paper import CIFAR_ERRORS, PARAMS_10, PARAMS_100
from .summary import count_flops, count_parameters, default_input_size


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


@lru_cache(maxsize=64)
def _variant_cost(name: str, num_classes: int) -> tuple[int, int]:
    model = create_model(name, num_classes=num_classes)
    return count_parameters(model), count_flops(model, default_input_size(model.config))


def run_cost(run: dict) -> tuple[int, int]:
    """(parameters, FLOPs per image) of a run's model, from its config."""
    config = DenseNetConfig.from_dict(run["config"]["model"])
    from ..models import DenseNet

    model = DenseNet(config)
    size = run["config"]["data"]["preprocess"]["crop"]
    return count_parameters(model), count_flops(model, size)


def paper_points(data: str) -> list[dict]:
    """Table 2 results for a CIFAR/SVHN data set name, with each model's parameters and FLOPs."""
    points = []
    classes = 100 if data.startswith("cifar100") else 10
    for name, errors in CIFAR_ERRORS.items():
        error = errors.get(data)
        if error is None:
            continue
        params = (PARAMS_100 if classes == 100 else PARAMS_10)[name]
        _, flops = _variant_cost(name, classes)
        points.append({"name": name, "error": error, "params": params, "flops": flops})
    return points


def plot_error_vs_cost(runs: list[dict], out_dir: Path) -> list[Path]:
    """Final test error against parameters and against FLOPs; the paper's Table 2 overlaid."""
    plt = _pyplot()
    datasets = sorted({run["config"]["recipe"]["data"] for run in runs})
    ours = []
    for run in runs:
        params, flops = run_cost(run)
        error = run["summary"].get("final_test_error", run["metrics"][-1]["test_error"])
        ours.append({"label": _label(run), "data": run["config"]["recipe"]["data"], "params": params,
                     "flops": flops, "error": error})  # fmt: skip
    paths = []
    for key, xlabel in (("params", "parameters"), ("flops", "FLOPs per image")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for data in datasets:
            pts = paper_points(data)
            if pts:
                ax.plot([p[key] for p in pts], [p["error"] for p in pts], "s", mfc="none", color="gray",
                        label=f"paper, {data}")  # fmt: skip
                for p in pts:
                    ax.annotate(p["name"].replace("densenet", ""), (p[key], p["error"]), fontsize=6, color="gray")
        for point in ours:
            ax.plot(point[key], point["error"], "o", label=f"{point['label']}, {point['data']}")
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


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """All figures for the given runs, written to ``out_dir``."""
    runs = [load_run(d) for d in run_dirs]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_curves(runs, out_dir / "error_curves.png"), *plot_error_vs_cost(runs, out_dir)]
