"""``densenets explain``: CAM / Grad-CAM overlays of image files (or volumes, for a 3-D model)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError

NO_GRADIENTS_SUFFIXES = (".onnx", ".xml", ".engine")  # ONNX, OpenVINO IR, TensorRT: no autograd


def add_parser(sub) -> None:
    p = sub.add_parser("explain", help="CAM / Grad-CAM heat maps of image files, drawn over the images")
    p.add_argument("checkpoint", help="run folder, checkpoint, torchvision weights, exported .json or named weights")
    p.add_argument("images", nargs="+", help="image or volume files, folders (searched recursively), quoted patterns")
    p.add_argument("--out", required=True, help="folder for one overlay PNG per image (volumes: 3 slices, map as .npy)")
    p.add_argument("--class", dest="class_name", help="explain this class (default: the prediction)")
    p.add_argument("--method", choices=("cam", "gradcam"), default="cam")
    p.add_argument("--layer", help="gradcam: the layer (default: the final feature map, features.relu5 in a DenseNet)")
    p.add_argument("--top-k", type=int, help="explain the K most probable classes (multi-label: at most K positives)")
    p.add_argument("--model", help="model name, for a bare weights file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run_explain)


def run_explain(args) -> int:
    from ..engine.loading import load_model
    from ..engine.prediction import expand_image_paths
    from ..engine.recipes import Recipe
    from ..engine.runtime import make_runtime
    from ..interpret.files import explain_files, format_line

    if Path(args.checkpoint).suffix in NO_GRADIENTS_SUFFIXES:
        raise ConfigError(
            f"{args.checkpoint}: explain needs gradients and an exported runtime model has none; "
            "pass the run folder, checkpoint or named weights it was exported from"
        )
    if args.layer and args.method != "gradcam":
        raise ConfigError("--layer is for --method gradcam (CAM reads the final feature map)")
    device = make_runtime(Recipe(device=args.device)).device
    loaded = load_model(args.checkpoint, args.model, device=device)
    records = explain_files(
        loaded, expand_image_paths(args.images), args.out, args.method, args.class_name, args.top_k, args.layer
    )
    print(json.dumps(records, indent=2) if args.json else "\n".join(format_line(r) for r in records))
    failed = sum("error" in r for r in records)
    if failed == len(records):
        return 2
    return 1 if failed else 0
