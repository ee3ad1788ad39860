"""Real CIFAR-10 test error of every inference path, for the shipped densenet_bc40_k12.cifar10 weights.

    python docs/inference_paths_accuracy.py DATA_DIR [RECORD.json]   # DATA_DIR/cifar-10-batches-py

(``torchvision.datasets.CIFAR10(DATA_DIR, download=True)`` writes it.) Prints a markdown table: path,
test error on the 10,000 test images, test predictions that differ from the plain fp32 model's,
and the seconds of the pass (batch 100); then whether each bf16 path is within 0.2 points and each
int8 path within 0.5 points of fp32 (issue 21's targets: no more than that much worse); then
checks that `densenets eval NAME --precision P --backend B` gives the same errors. RECORD.json
(optional) receives every figure printed, with the machine and package versions.
"""

import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from densenets import optimize_for_inference
from densenets.data import DataSpec, build_data
from densenets.deploy.precision import with_precision
from densenets.engine.evaluation import evaluate_checkpoint
from densenets.engine.loading import load_model

NAME = "densenet_bc40_k12.cifar10"
data_dir = sys.argv[1]
test = build_data(DataSpec(name="cifar10", data_dir=data_dir, image_size=32)).test
loader = DataLoader(test, batch_size=100)
labels = torch.cat([y for _, y in loader])
loaded = load_model(NAME)
loaded.run_config["recipe"]["data_dir"] = data_dir  # int8: automatic calibration on up to 256 training images
model = loaded.model


def predictions(module) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.no_grad():
        out = torch.cat([module(x).argmax(1) for x, _ in loader])
    return out, time.perf_counter() - start


reference, _ = predictions(model)
paths = {
    "module, fp32": lambda: model,
    "module, fp32, channels_last": lambda: model.to(memory_format=torch.channels_last),
    "optimize_for_inference, fp32, PyTorch": lambda: optimize_for_inference(
        model.to(memory_format=torch.contiguous_format), backend="torch"
    ),
    "ONNX Runtime, fp32": lambda: optimize_for_inference(model, backend="onnxruntime"),
    "optimize_for_inference, bf16": lambda: optimize_for_inference(model, backend="torch", precision="bf16"),
    "int8, ONNX Runtime (auto calibration)": lambda: with_precision(loaded, "int8", backend="onnxruntime")[0],
    "OpenVINO, fp32 (optimize_for_inference's default)": lambda: optimize_for_inference(model, backend="openvino"),
    "OpenVINO, bf16": lambda: optimize_for_inference(model, backend="openvino", precision="bf16"),
    "int8, OpenVINO + NNCF (auto calibration)": lambda: with_precision(loaded, "int8", backend="openvino")[0],
}
errors, rows = {}, []
print("| path | test error | predictions changed vs fp32 | seconds (10,000 images) |")
print("|---|---|---|---|")
for label, make in paths.items():
    predicted, seconds = predictions(make())
    errors[label] = 100.0 * int((predicted != labels).sum()) / len(labels)
    changed = int((predicted != reference).sum())
    print(f"| {label} | {errors[label]:.2f}% | {changed} | {seconds:.1f} |", flush=True)
    rows.append({"path": label, "test_error": errors[label], "changed_vs_fp32": changed, "seconds": round(seconds, 2)})

targets = {"bf16": 0.2, "int8": 0.5}  # points of test error no path of that precision may lose against fp32
checks = []
for label, error in errors.items():
    precision = next((p for p in targets if p in label), None)
    if precision:
        loss = error - errors["module, fp32"]
        checks.append({"path": label, "loss_points": round(loss, 2), "target": targets[precision],
                       "met": loss <= targets[precision]})  # fmt: skip
        print(f"{label}: {loss:+.2f} points against fp32 (target: at most +{targets[precision]}): "
              f"{'met' if loss <= targets[precision] else 'NOT MET'}")  # fmt: skip

for precision, backend, label in (("fp32", "auto", "module, fp32"), ("bf16", "torch", "optimize_for_inference, bf16"),
                                  ("int8", "onnxruntime", "int8, ONNX Runtime (auto calibration)"),
                                  ("fp32", "openvino", "OpenVINO, fp32 (optimize_for_inference's default)"),
                                  ("bf16", "openvino", "OpenVINO, bf16"),
                                  ("int8", "openvino", "int8, OpenVINO + NNCF (auto calibration)")):  # fmt: skip
    result = evaluate_checkpoint(
        NAME, data="cifar10", data_dir=data_dir, precision=precision, device="cpu", batch_size=100, backend=backend
    )
    same = abs(result["error"] - errors[label]) < 0.005  # one image is 0.01 points
    print(f"densenets eval {NAME} --precision {precision} --backend {backend}: {result['error']:.2f}% "
          f"({'same' if same else 'DIFFERENT'})")  # fmt: skip
    checks.append({"cli": f"eval --precision {precision} --backend {backend}", "test_error": result["error"],
                   "script_error": errors[label]})  # fmt: skip

if len(sys.argv) > 2:
    import onnxruntime
    import openvino

    from densenets.hardware import cpu_info

    record = {"weights": NAME, "test_images": len(labels), "batch": 100, "rows": rows, "checks": checks,
              "cpu": cpu_info(), "python": platform.python_version(), "torch": torch.__version__,
              "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__,
              "threads": torch.get_num_threads()}  # fmt: skip
    Path(sys.argv[2]).parent.mkdir(parents=True, exist_ok=True)
    Path(sys.argv[2]).write_text(json.dumps(record, indent=1) + "\n")
