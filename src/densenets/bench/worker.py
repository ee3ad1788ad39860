"""One benchmark contender in its own process: ``python -m densenets.bench.worker SPEC_JSON``.

Each contender runs in a fresh process so that none inherits another's allocator state,
caches or thread pools; the harness alternates processes round-robin.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import torch

from ..models import create_model
from ..models.inference import optimize_for_inference
from .reference import torchvision_twin
from .timing import inference_fn, synchronize, training_step_fn

# variant -> (memory format, fused block, inference form)
VARIANTS = {
    "torchvision": ("nchw", None, "module"),
    "torchvision-cl": ("cl", None, "module"),
    "default": ("cl", True, "module"),
    "plain-nchw": ("nchw", False, "module"),
    "plain-cl": ("cl", False, "module"),
    "optimized": ("nchw", True, "optimized"),
    "onnxruntime": ("nchw", True, "onnxruntime"),
}


def build(spec: dict) -> Callable[[], object]:
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the training engine does
    if spec.get("tune_allocator"):
        from ..engine.runtime import tune_cpu_allocator

        tune_cpu_allocator()
    layout, fused, form = VARIANTS[spec["variant"]]
    if spec["variant"] == "default" and device.type == "cuda" and spec.get("amp", "none") == "none":
        layout = "nchw"  # the engine's rule: channels_last on CUDA only with AMP
    torch.manual_seed(0)
    model = create_model(spec["model"], memory_efficient=spec.get("memory_efficient", False))
    if spec["variant"].startswith("torchvision"):
        model = torchvision_twin(model)
    elif fused is not None:
        model.set_fused(fused)
    memory_format = torch.channels_last if layout == "cl" else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    x = torch.randn(spec["batch"], 3, spec["size"], spec["size"], device=device).contiguous(memory_format=memory_format)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.get("amp", "none")]
    if spec["task"] == "train":
        y = torch.randint(0, 10, (spec["batch"],), device=device)
        return training_step_fn(model, x, y, amp)
    if form == "optimized":
        return inference_fn(optimize_for_inference(model), x)
    if form == "onnxruntime":
        return inference_fn(optimize_for_inference(model, backend="onnxruntime"), x)
    return inference_fn(model, x, amp)


def run(spec: dict) -> dict:
    fn = build(spec)
    device = torch.device(spec["device"])
    for _ in range(spec.get("warmup", 2)):
        fn()
    synchronize(device)
    samples = []
    for _ in range(spec["reps"]):
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return {"samples_s": samples}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
