"""``densenets export``."""

from __future__ import annotations

from ..export.formats import FORMATS


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export to ONNX, TorchScript, safetensors + JSON or OpenVINO IR + JSON (checked)")
    p.add_argument("checkpoint", help="run folder, checkpoint, weights file or exported .json")
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", help="output file (default: beside the checkpoint)")
    p.add_argument("--model", help="model name, for a bare weights file")
    p.add_argument("--input-size", type=int, help="example input side for tracing (default: the model's)")
    p.add_argument("--int8", action="store_true", help="onnx, openvino: a quantized int8 model (approximate)")
    p.add_argument("--calibration", help="--int8: folder of calibration images, or 'auto' (the run's training images)")
    p.set_defaults(run=run_export)


def run_export(args) -> int:
    from ..export.formats import export_model

    result = export_model(args.checkpoint, args.format, args.out, args.model, args.input_size, args.int8,
                          args.calibration)  # fmt: skip
    for line in result.get("notes", []):
        print(line)
    if args.int8:
        checker = "onnxruntime" if args.format == "onnx" else "openvino"
        extra = f" and {result['config']}" if "config" in result else ""
        print(f"wrote {result['path']}{extra} ({args.format}, {result['note']}; checked with {checker}: top-1 agrees "
              f"with fp32 PyTorch on {result['top1_agreement']:.1f}% of {result['checked_images']} calibration images, "
              f"max |difference| {result['max_abs_diff']:.3g})")  # fmt: skip
        return 0
    check = result.get("verified", "not checked")
    diff = f", max |difference| {result['max_abs_diff']:.2e}" if "max_abs_diff" in result else ""
    extra = f" and {result['config']}" if "config" in result else ""
    print(f"wrote {result['path']}{extra} ({args.format}; checked against PyTorch with {check}{diff})")
    return 0
