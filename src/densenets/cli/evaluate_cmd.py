"""``densenets eval`` and ``densenets predict``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..engine.loading import resolve_checkpoint_path
from ..errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="test error, top-1/top-5, per-class accuracy and confusion matrix of a model")
    p.add_argument("checkpoint", help="run folder, checkpoint (.pt), torchvision weights (.pth) or exported .json")
    p.add_argument("--data", help="data set name (default: the one the run trained on)")
    p.add_argument("--data-dir", help="where the data set lives (default: the run's)")
    p.add_argument("--ten-crop", action="store_true", help="average over 10 crops (ImageNet-style data, Table 3)")
    p.add_argument("--model", help="model name, for a bare weights file whose architecture is ambiguous")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", help="folder for metrics.json, confusion.csv/png (default: beside the checkpoint)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_precision_options(p)
    p.set_defaults(run=run_eval)

    p = sub.add_parser("predict", help="top-k classes of image files, folders or glob patterns")
    p.add_argument("checkpoint", help="run folder, checkpoint, torchvision weights or exported .json")
    p.add_argument(
        "images",
        nargs="+",
        help="image files, folders (searched recursively) or quoted patterns like 'photos/**/*.jpg'",
    )
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--csv", metavar="FILE", help="write file, top-k classes and probabilities, error to FILE")
    p.add_argument("--model", help="model name, for a bare weights file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_precision_options(p)
    p.set_defaults(run=run_predict)


def add_precision_options(p) -> None:
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "int8"),
        default="fp32",
        help="bf16/int8: faster on CPUs with AVX-512 bf16/VNNI, approximate (docs/inference.md)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "openvino"),
        default="auto",
        help="runtime (default auto: fp32 runs the model itself; bf16/int8 the fastest installed, named in the output)",
    )
    p.add_argument("--calibration", help="int8: folder of calibration images, or 'auto' (default: a few hundred "
                   "training images of the run's own split: never its validation or test rows)")  # fmt: skip


def run_eval(args) -> int:
    from ..engine.evaluation import evaluate_checkpoint

    source = resolve_checkpoint_path(args.checkpoint)
    out = Path(args.out) if args.out else source.parent / f"eval-{source.stem}"
    result = evaluate_checkpoint(
        args.checkpoint, args.data, args.data_dir, args.ten_crop, args.batch_size, args.device, args.workers,
        args.model, out, args.precision, args.calibration, args.backend,
    )  # fmt: skip
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
        return 0
    print(f"evaluated {result['checkpoint']} ({result['checkpoint_choice']})")
    for note in result.get("notes", []):
        print(f"note: {note}")
    print(f"precision: {result['precision_note']}")
    if result.get("multilabel"):
        print(format_multilabel(result))
        print(f"metrics.json, per_class.csv and roc.png written to {out}")
        return 0
    crops = ", ten-crop (logits summed over the crops)" if args.ten_crop else ""
    print(f"{result['data']} test set ({result['count']} images{crops}): error {result['error']:.2f}%  "
          f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}")  # fmt: skip
    worst = sorted(result["per_class_accuracy"].items(), key=lambda kv: kv[1])[:5]
    print("lowest per-class accuracy: " + ", ".join(f"{name} {acc:.1f}%" for name, acc in worst))
    if result.get("auroc_macro") is not None:
        print(f"macro AUROC {result['auroc_macro']:.3f} (each class's softmax probability against the other "
              f"classes, over the {result['auroc_classes']} classes present in the test set)")  # fmt: skip
    print(f"metrics.json, confusion.csv and confusion.png written to {out}")
    return 0


def format_multilabel(result: dict) -> str:
    """The per-class table of a multi-label evaluation, headed by macro and micro AUROC."""

    def cell(value, percent: bool = False) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.1f}%" if percent else f"{value:.3f}"

    lines = [
        f"{result['data']} test set ({result['count']} images): macro AUROC {cell(result['auroc_macro'])} over "
        f"{result['auroc_classes']} of {len(result['class_names'])} classes  "
        f"micro AUROC {cell(result['auroc_micro'])}  macro AP {cell(result['ap_macro'])}  loss {result['loss']:.4f}",
        f"thresholds: {result['threshold_source']}",
        *(f"  {name}: {how}" for name, how in result["threshold_sources"].items() if how != result["threshold_source"]),
        f"{'class':<16} {'AUROC':>6} {'AP':>6} {'prev.':>6} {'thresh.':>7} {'sens.':>6} {'spec.':>6} {'F1':>6}",
    ]
    if "precision_thresholds" in result:
        lines.insert(
            2, precision_line(result, "metrics.json precision_thresholds; the figures here use the saved ones")
        )
    for name in result["class_names"]:
        lines.append(
            f"{name[:16]:<16} {cell(result['auroc'][name]):>6} {cell(result['average_precision'][name]):>6} "
            f"{cell(result['prevalence'][name], True):>6} {cell(result['thresholds'][name]):>7} "
            f"{cell(result['sensitivity'][name], True):>6} {cell(result['specificity'][name], True):>6} "
            f"{cell(result['f1'][name]):>6}"
        )
    return "\n".join(lines)


def precision_line(check: dict, where: str) -> str:
    """What bf16/int8 changes at the fp32-chosen thresholds, and the thresholds re-chosen for it."""
    shown = ", ".join(f"{n} {t:.3f}" for n, t in check["precision_thresholds"].items())
    return (
        f"{check['thresholds_for']}: at the saved thresholds (chosen on fp32 outputs) "
        f"{check['precision_positives_changed']} validation decisions change "
        f"({check['precision_images_changed']} of {check['precision_val_images']} images); thresholds "
        f"re-chosen on the validation split for {check['thresholds_for']}: {shown} ({where})"
    )


def run_predict(args) -> int:
    from ..deploy.precision import plan, with_precision
    from ..engine.loading import load_model, loaded_notes
    from ..engine.prediction import (
        expand_image_paths,
        format_predictions,
        multilabel_thresholds,
        predict_images,
        write_multilabel_csv,
        write_predictions_csv,
    )
    from ..engine.recipes import Recipe
    from ..engine.runtime import make_runtime

    if args.batch_size < 1 or args.top_k < 1:
        raise ConfigError("--batch-size and --top-k must be >= 1")
    _, device = plan(args.precision, args.backend, args.device)  # the rule eval follows too
    device = make_runtime(Recipe(device=device)).device
    loaded = load_model(args.checkpoint, args.model, device=device)
    for line in loaded_notes(loaded):  # stderr under --json: stdout stays one JSON document
        print(line, file=sys.stderr if args.json else sys.stdout)
    exact = loaded.model
    loaded.model, precision = with_precision(loaded, args.precision, args.calibration, args.backend, device.type)
    if not args.json and precision["backend"] != "module":
        print(f"precision: {precision['note']}")
    if multilabel_thresholds(loaded) is not None:  # thresholds were chosen on fp32 outputs: what changes here
        from ..engine.evaluation import validation_precision_check

        fast, loaded.model = loaded.model, exact
        check = validation_precision_check(loaded, fast, args.precision, precision["device"])
        loaded.model = fast
        if check is not None:
            print(precision_line(check, "predict uses the saved ones"), file=sys.stderr if args.json else sys.stdout)
    records = predict_images(loaded, expand_image_paths(args.images), args.top_k, args.batch_size)
    failed = sum("error" in r for r in records)
    multilabel = multilabel_thresholds(loaded)
    if multilabel is not None and not args.json:
        print(f"multi-label: positives at or above per-class thresholds ({multilabel[1]})")
    if args.csv and multilabel is not None:
        write_multilabel_csv(records, args.csv, loaded.class_names)
    elif args.csv:
        write_predictions_csv(records, args.csv, min(args.top_k, loaded.model.config.num_classes))
    if not args.csv or args.json:
        print(json.dumps(records, indent=2) if args.json else format_predictions(records))
    else:
        print(f"{len(records) - failed} images predicted on {device}, {failed} unreadable; written to {args.csv}")
    if failed == len(records):
        return 2
    return 1 if failed else 0
