"""``densenets eval``: error, top-1/top-5, loss, per-class accuracy and a confusion matrix."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..data import build_data
from ..data.images import with_transform
from ..data.recorded import recorded_spec, spec_record
from ..data.transforms import image_transform, ten_crop_transform
from ..deploy.precision import with_precision
from ..errors import ConfigError
from ..models.weights import LoadedModel
from .loading import choose_checkpoint, load_model
from .loop import evaluate
from .recipes import Recipe
from .runlog import dumps
from .runtime import make_runtime


def check_class_names(loaded: LoadedModel, data_names: list[str], data: str) -> None:
    """Refuse, in one line naming both lists, data whose classes are not the model's (other
    names or another order): its error and confusion matrix would be silently wrong."""
    model_names = list(loaded.class_names)
    if not loaded.class_names_recorded or not model_names or model_names == list(data_names):
        return
    first = next((i for i, (a, b) in enumerate(zip(data_names, model_names, strict=False)) if a != b), None)
    where = ""
    if first is not None:
        where = f"; first difference at class {first}: {data_names[first]!r} vs {model_names[first]!r}"
    raise ConfigError(
        f"{data}'s classes are not the model's (other names or another order): data {_names(data_names)}, "
        f"model {_names(model_names)}{where}"
    )


def _names(names: list[str], shown: int = 12) -> str:
    if len(names) <= shown:
        return "[" + ", ".join(names) + "]"
    return "[" + ", ".join(names[: shown - 2]) + f", ..., {names[-1]}] ({len(names)} classes)"


def same_preprocessing(data: dict, model: dict) -> bool:
    """True when a data set's test-time transform is the model's (mean, std, channels, sizes)."""
    keys = ("mean", "std", "channels", "crop")
    if any(_plain(data.get(k)) != _plain(model.get(k)) for k in keys):
        return False
    return (data.get("resize") or data["crop"]) == (model.get("resize") or model["crop"])


def _plain(value):
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | None = None,
    data_dir: str | None = None,
    ten_crop: bool = False,
    batch_size: int = 64,
    device: str = "auto",
    workers: int | None = None,
    model_name: str | None = None,
    out_dir: str | Path | None = None,
    precision: str = "fp32",
    calibration: str | None = None,
    backend: str = "auto",
) -> dict:
    """Evaluate a trained model on a data set's test split; writes metrics and figures to ``out_dir``.

    A run folder means the checkpoint :func:`choose_checkpoint` picks; the result names it and why.
    ``precision`` bf16 or int8 (or a ``backend``) evaluates the optimised model on the device
    :func:`densenets.deploy.precision.plan` resolves (ONNX Runtime and OpenVINO: the CPU).
    """
    path, reason = choose_checkpoint(checkpoint)
    loaded = load_model(path, model_name)
    recipe = loaded.run_config.get("recipe", {})
    if loaded.weights:
        reason += f"; {loaded.weights}"
    # the run's own split (seed, val_split), labels and transform, from what it recorded (data.recorded)
    spec, data_notes = recorded_spec(loaded.run_config, loaded.preprocess, data, data_dir)
    data = spec.name
    loaded.notes = [*loaded.notes, *data_notes]  # what had to be assumed (a seed an old export does not record)
    preprocess = loaded.preprocess
    bundle = build_data(spec)
    # int8's automatic calibration reads the training rows of the data set evaluated here, split as here
    loaded.run_config["recipe"] = {**recipe, **spec_record(spec)}
    if bundle.num_classes != loaded.model.config.num_classes:
        raise ConfigError(
            f"{data} has {bundle.num_classes} classes but the model predicts {loaded.model.config.num_classes}"
        )
    check_class_names(loaded, bundle.class_names, data)
    test = bundle.test
    if not same_preprocessing(bundle.preprocess, preprocess):
        test = with_transform(test, image_transform(preprocess))  # the model's input, as predict makes it
    if ten_crop:
        if not loaded.preprocess.get("resize") or loaded.preprocess["resize"] <= loaded.preprocess["crop"]:
            raise ConfigError("ten-crop testing needs images resized larger than the crop (ImageNet-style data)")
        test = with_transform(test, ten_crop_transform(loaded.preprocess))
    fast, precision_info = with_precision(loaded, precision, calibration, backend, device)
    runtime = make_runtime(Recipe(device=precision_info["device"], amp="none"))
    if precision_info["backend"] == "module":
        flat = getattr(loaded.model.config, "spatial_dims", 2) == 2  # channels_last is for 4-D tensors
        memory_format = torch.channels_last if runtime.channels_last and flat else torch.contiguous_format
        model = loaded.model.to(runtime.device, memory_format=memory_format)
    else:
        model = fast.to(runtime.device)
    workers = workers if workers is not None else (8 if runtime.device.type == "cuda" else 0)
    loader = DataLoader(test, batch_size=batch_size, num_workers=workers)
    metrics = evaluate(model, loader, runtime, confusion=True)
    names = loaded.class_names if len(loaded.class_names) == bundle.num_classes else bundle.class_names
    if bundle.multilabel:
        head = {"checkpoint": str(loaded.source), "checkpoint_choice": reason, "notes": loaded.notes, "data": data,
                "ten_crop": ten_crop, "precision": precision, "precision_note": precision_info["note"]}  # fmt: skip
        if precision != "fp32" and bundle.val is not None:  # thresholds were chosen on fp32 outputs
            head.update(precision_check(loaded, model, bundle, runtime, names, precision))
        return multilabel_evaluation(head, metrics, names, loaded.preprocess, out_dir)
    result = {
        "checkpoint": str(loaded.source),
        "checkpoint_choice": reason,
        "notes": loaded.notes,  # what the loader assumed (a bare state dict's normalisation)
        "data": data,
        "ten_crop": ten_crop,
        "precision": precision,
        "backend": precision_info["backend"],
        "precision_note": precision_info["note"],
        **{k: v for k, v in metrics.items() if k not in ("confusion", "auroc_macro", "auroc")},
        "per_class_accuracy": {name: acc for name, acc in zip(names, metrics["per_class_accuracy"], strict=True)},
        "auroc_macro": _finite(metrics["auroc_macro"]),  # one-vs-rest on the softmax, classes with both labels
        "auroc": {name: _finite(v) for name, v in zip(names, metrics["auroc"], strict=True)},
        "confusion": metrics["confusion"],
        "class_names": names,
    }
    if out_dir is not None:
        save_evaluation(result, Path(out_dir))
    return result


def save_evaluation(result: dict, out_dir: Path) -> list[Path]:
    """metrics.json, confusion.csv and confusion.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "metrics.json"
    json_path.write_text(dumps(result, indent=2))
    csv_path = out_dir / "confusion.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *result["class_names"]])
        for name, row in zip(result["class_names"], result["confusion"], strict=True):
            writer.writerow([name, *row])
    png_path = out_dir / "confusion.png"
    plot_confusion(
        result["confusion"], result["class_names"], png_path, f"{result['data']}: error {result['error']:.2f}%"
    )
    return [json_path, csv_path, png_path]


def plot_confusion(matrix: list[list[int]], names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.array(matrix, dtype=float)
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(names)
    fig, ax = plt.subplots(figsize=(min(2 + 0.45 * n, 14), min(1.6 + 0.45 * n, 13)))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n))
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticks(range(n))
        ax.set_yticklabels(names, fontsize=7)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    if counts[i, j]:
                        colour = "white" if normalised[i, j] > 0.5 else "black"
                        ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def multilabel_evaluation(head: dict, metrics: dict, names: list[str], preprocess: dict, out_dir) -> dict:
    """The multi-label result: per-class AUROC, AP, prevalence and the operating points of the
    model's thresholds (sensitivity, specificity, F1); with ``out_dir`` metrics.json,
    per_class.csv and roc.png."""
    from .multilabel import operating_points

    thresholds, source, sources = saved_thresholds(preprocess, names)
    probs, targets = metrics.pop("probs"), metrics.pop("targets")
    points = operating_points(probs, targets, thresholds)

    def per_class(values) -> dict:
        return {name: _finite(v) for name, v in zip(names, values, strict=True)}

    result = {
        **head,
        "multilabel": True,
        "count": metrics["count"],
        "loss": metrics["loss"],
        "auroc_macro": _finite(metrics["auroc_macro"]),
        "auroc_classes": metrics["auroc_classes"],  # how many classes the macro mean is over
        "auroc_micro": _finite(metrics["auroc_micro"]),
        "ap_macro": _finite(metrics["ap_macro"]),
        "auroc": per_class(metrics["auroc"]),
        "average_precision": per_class(metrics["average_precision"]),
        "prevalence": per_class(metrics["prevalence"]),
        "known_labels": dict(zip(names, metrics["known"], strict=True)),
        "thresholds": per_class(thresholds),
        "threshold_source": source,
        "threshold_sources": sources,
        # per-class precision (positive predictive value) as "ppv": "precision" names fp32/bf16/int8
        **{key: per_class(points[key]) for key in ("sensitivity", "specificity", "f1")},
        "ppv": per_class(points["precision"]),
        "class_names": list(names),
    }
    if out_dir is not None:
        save_multilabel_evaluation(result, probs, targets, Path(out_dir))
    return result


def precision_check(loaded: LoadedModel, fast, bundle, runtime, names: list[str], precision: str) -> dict:
    """:func:`precision_thresholds` on ``bundle``'s validation split, read as the model reads its input."""
    val = bundle.val
    if not same_preprocessing(bundle.preprocess, loaded.preprocess):
        val = with_transform(val, image_transform(loaded.preprocess))
    rule = loaded.run_config.get("recipe", {}).get("threshold", "f1")
    return {**precision_thresholds(loaded, fast, val, runtime, names, rule), "thresholds_for": precision}


def validation_precision_check(loaded: LoadedModel, fast, precision: str, device: str) -> dict | None:
    """For ``predict`` at bf16/int8 of a multi-label run: :func:`precision_check` on the run's own
    validation split (rebuilt from its record); None when there is nothing to check against (fp32,
    single-label, a model without its run's data record, a run without validation rows)."""
    if precision == "fp32" or not loaded.preprocess.get("multilabel"):
        return None
    if not loaded.run_config.get("recipe", {}).get("data"):
        return None
    bundle = build_data(recorded_spec(loaded.run_config, loaded.preprocess)[0])
    if bundle.val is None:
        return None
    runtime = make_runtime(Recipe(device=device, amp="none"))
    names = loaded.class_names if len(loaded.class_names) == bundle.num_classes else bundle.class_names
    return precision_check(loaded, fast, bundle, runtime, names, precision)


def precision_thresholds(loaded: LoadedModel, fast, val, runtime, names: list[str], rule: str) -> dict:
    """The saved thresholds were chosen on fp32 outputs: how many validation decisions (image, class)
    the optimised model ``fast`` flips at them, and thresholds re-chosen on its validation outputs."""
    import numpy as np

    from .multilabel import choose_thresholds

    saved = np.asarray(saved_thresholds(loaded.preprocess, names)[0])
    loader = DataLoader(val, batch_size=64)
    exact = evaluate(loaded.model.to(runtime.device), loader, runtime)["probs"] >= saved
    approx = evaluate(fast, loader, runtime)
    flipped = exact != (approx["probs"] >= saved)
    chosen = choose_thresholds(approx["probs"], approx["targets"], rule)
    return {
        "precision_positives_changed": int(flipped.sum()),
        "precision_images_changed": int(flipped.any(1).sum()),
        "precision_val_images": int(flipped.shape[0]),
        "precision_thresholds": dict(zip(names, chosen, strict=True)),
    }


def saved_thresholds(preprocess: dict, names: list[str]) -> tuple[list[float], str, dict[str, str]]:
    """The thresholds a multi-label model carries, how they were chosen (a line, and per class);
    0.5 when it carries none. A list that is not one per class stops in one line."""
    from ..errors import CheckpointError
    from .multilabel import DEFAULT_THRESHOLD

    thresholds = preprocess.get("thresholds")
    if not thresholds:
        why = "the model carries no thresholds (its run had no validation split)"
        return [DEFAULT_THRESHOLD] * len(names), f"0.5 for every class: {why}", dict.fromkeys(names, f"0.5: {why}")
    if len(thresholds) != len(names):
        raise CheckpointError(
            f"the model carries {len(thresholds)} thresholds for its {len(names)} classes; "
            "they cannot be matched to the classes (re-save the model from its run)"
        )
    source = preprocess.get("threshold_source") or "the thresholds saved with the model"
    sources = preprocess.get("threshold_sources") or dict.fromkeys(names, source)
    return list(thresholds), source, dict(sources)


def _finite(value: float) -> float | None:
    """NaN (a class with one label value in this split) as None: null in metrics.json."""
    return None if value is None or math.isnan(value) else float(value)


PER_CLASS_COLUMNS = ("auroc", "average_precision", "prevalence", "thresholds", "sensitivity", "specificity", "f1")


def save_multilabel_evaluation(result: dict, probs, targets, out_dir: Path) -> list[Path]:
    """metrics.json, per_class.csv (one row per class) and roc.png (one ROC curve per class)."""
    from .multilabel import roc_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "metrics.json"
    json_path.write_text(dumps(result, indent=2))
    csv_path = out_dir / "per_class.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", *PER_CLASS_COLUMNS])
        for name in result["class_names"]:
            writer.writerow(
                [name, *("" if result[k][name] is None else f"{result[k][name]:.6f}" for k in PER_CLASS_COLUMNS)]
            )
    png_path = out_dir / "roc.png"
    plot_roc(roc_curves(probs, targets), result, png_path)
    return [json_path, csv_path, png_path]


def plot_roc(curves: list, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    for name, curve in zip(result["class_names"], curves, strict=True):
        if curve is not None:
            ax.plot(curve[0], curve[1], lw=1.2, label=f"{name} ({result['auroc'][name]:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="gray", lw=1)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    macro = result["auroc_macro"]
    ax.set_title(f"{result['data']}: ROC per class, macro AUROC {macro:.3f}" if macro is not None else "ROC")
    ax.legend(fontsize=7, loc="lower right", title="class (AUROC)", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
