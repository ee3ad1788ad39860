"""One benchmark contender in its own process: ``python -m densenets.bench.worker SPEC_JSON``.

Each contender runs in a fresh process so that none inherits another's allocator setting,
caches or thread pools; the harness alternates the processes round by round.

A spec names what a user would write:

- ``impl``: ``densenets`` (our module) or ``torchvision`` (its DenseNet, same weights);
- ``layout``: ``nchw`` or ``cl`` (``model.to(memory_format=torch.channels_last)``);
- ``allocator``: ``tuned`` (``tune_cpu_allocator()``, what ``densenets train`` applies) or ``default``;
- ``precision``: ``fp32``, ``bf16`` (autocast for modules; ``optimize_for_inference(...,
  precision="bf16")`` for the optimised form) or ``int8`` (optimised forms only);
- ``form``: ``module``, ``optimized`` (``optimize_for_inference``, with ``backend`` when named,
  else the backend it picks itself, as a user runs it), ``onnxruntime`` (the model exported to
  ONNX and run by ONNX Runtime), ``openvino`` (converted by OpenVINO; int8 by NNCF) or
  ``compile`` (``torch.compile`` with inductor's freezing; bf16 under autocast);
- ``graph`` (ours through OpenVINO): ``module`` (the model as built: pool-before-conv
  transitions), ``folded`` (BatchNorm after each conv folded first) or ``conv_then_pool``
  (torchvision's transition order), to measure what each exact reformulation buys.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..deploy import optimize_for_inference
from ..deploy.choice import default_backend
from ..deploy.graph import plain_eval_copy
from ..deploy.onnx_runtime import OnnxRuntimeModule
from ..engine.runtime import amp_dtype
from ..models import create_model
from .reference import torchvision_twin
from .timing import inference_fn, synchronize, training_step_fn

IMPLS = ("densenets", "torchvision")
LAYOUTS = ("nchw", "cl")
ALLOCATORS = ("tuned", "default")
PRECISIONS = ("fp32", "bf16", "int8")
FORMS = ("module", "optimized", "onnxruntime", "openvino", "compile")
GRAPHS = ("module", "folded", "conv_then_pool")


def _amp_name(precision: str) -> str:
    return "none" if precision == "fp32" else precision


def check_spec(spec: dict) -> None:
    """Refuse a spec that names no real setting (a typo would otherwise time something else)."""
    for key, valid in (("impl", IMPLS), ("layout", LAYOUTS), ("allocator", ALLOCATORS), ("form", FORMS)):
        if spec.get(key) not in valid:
            raise ValueError(f"bench spec: {key} must be one of {', '.join(valid)}; got {spec.get(key)!r}")
    precision = spec.get("precision", "fp32")
    if precision not in PRECISIONS and precision != "fp16":
        raise ValueError(f"bench spec: precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if spec["task"] == "train" and spec["form"] != "module":
        raise ValueError("bench spec: only the module form trains")
    if precision == "int8" and spec["form"] == "module":
        raise ValueError("bench spec: int8 needs an optimised form (optimized or onnxruntime)")
    if spec["form"] == "optimized" and spec["impl"] != "densenets":
        raise ValueError("bench spec: optimize_for_inference takes our DenseNet only")
    if spec.get("graph", "module") not in GRAPHS:
        raise ValueError(f"bench spec: graph must be one of {', '.join(GRAPHS)}; got {spec.get('graph')!r}")
    if spec["form"] == "compile" and precision == "int8":
        raise ValueError("bench spec: torch.compile rows run fp32 or bf16")


def build(spec: dict) -> Callable[[], object]:
    check_spec(spec)
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the training engine does
    if spec["allocator"] == "tuned":
        from ..engine.runtime import tune_cpu_allocator

        tune_cpu_allocator()
    torch.manual_seed(0)
    model = create_model(spec["model"], memory_efficient=spec.get("memory_efficient", False))
    if spec["impl"] == "torchvision":
        model = torchvision_twin(model)
        if spec.get("memory_efficient"):
            for layer in model.modules():
                if hasattr(layer, "memory_efficient"):  # torchvision's own checkpointing switch
                    layer.memory_efficient = True
    memory_format = torch.channels_last if spec["layout"] == "cl" else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    x = torch.randn(spec["batch"], 3, spec["size"], spec["size"], device=device).contiguous(memory_format=memory_format)
    precision = spec.get("precision", "fp32")
    if spec["task"] == "train":
        y = torch.randint(0, 10, (spec["batch"],), device=device)
        return training_step_fn(model, x, y, amp_dtype(_amp_name(precision)))
    calibration = x.cpu()  # int8 ranges from the timed batch itself: fine for timing, not for accuracy
    ov_backend = spec["form"] == "openvino" or (
        spec["form"] == "optimized" and (spec.get("backend") or default_backend(precision)) == "openvino"
    )
    if ov_backend:  # ours as optimize_for_inference builds it (graph "module"), or another graph, or torchvision's
        return inference_fn(openvino_runner(spec, model, x, calibration), x)
    if spec["form"] == "optimized":
        options = {} if precision == "fp32" else {"precision": precision}
        if precision == "int8":
            options["calibration"] = calibration
        return inference_fn(optimize_for_inference(model, backend=spec.get("backend"), **options), x)
    if spec["form"] == "onnxruntime":
        options = {} if precision == "fp32" else {"precision": precision, "calibration": [calibration]}
        return inference_fn(OnnxRuntimeModule(model.cpu().eval(), x[:1].cpu(), **options), x)
    if spec["form"] == "compile":
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights become constants: what torch.compile offers inference
        return inference_fn(torch.compile(model.eval()), x, amp_dtype(_amp_name(precision)))
    return inference_fn(model, x, amp_dtype(_amp_name(precision)))


def openvino_runner(spec: dict, model, x: torch.Tensor, calibration: torch.Tensor):
    """An OpenVinoModule of the spec's model and graph. With ``ir_cache`` in the spec (the harness
    sets it), the converted (and for int8 NNCF-quantized) model is read from an IR that an
    earlier round wrote: every round times the same model, and conversion and calibration, which are
    not timed, run once per contender instead of once per round."""
    import openvino as ov

    from ..deploy.openvino import OpenVinoModule

    precision = spec.get("precision", "fp32")
    graph = spec.get("graph", "module") if spec["impl"] == "densenets" else "torchvision"
    example = x[:1].cpu()
    folder = spec.get("ir_cache")
    key = f"{spec['impl']}-{graph}-{spec['model']}-{spec['size']}-{spec['batch']}-{precision}"
    path = Path(folder, key + ".xml") if folder else None
    if path is not None and path.is_file():
        return OpenVinoModule(None, example, precision, ov_model=ov.Core().read_model(str(path)))
    source = openvino_graph(model, graph) if spec["impl"] == "densenets" else model.cpu().eval()
    runner = OpenVinoModule(source, example, precision, calibration=[calibration] if precision == "int8" else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        runner.save(path)
    return runner


def openvino_graph(model, graph: str):
    """Our model as the graph OpenVINO converts: as built, BatchNorm-folded, or conv-then-pool transitions."""
    from ..deploy.folding import folded_copy
    from ..models.densenet import Transition

    if graph == "folded":
        return folded_copy(model)
    model = plain_eval_copy(model)
    if graph == "conv_then_pool":
        for module in model.modules():
            if isinstance(module, Transition):
                module.forward = _conv_then_pool.__get__(module)
    return model


def _conv_then_pool(self, x):
    """A transition in torchvision's order (conv, then pool): the same result, 4x the conv's FLOPs."""
    return self.pool(self.conv(self.relu(self.norm(x))))


def run(spec: dict, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Warm up, then time ``reps`` calls; returns every sample and their median (seconds).
    ``clock``: seconds, replaceable in tests."""
    fn = build(spec)
    device = torch.device(spec["device"])
    for _ in range(spec.get("warmup", 1)):
        fn()
    synchronize(device)
    samples = []
    for _ in range(spec["reps"]):
        start = clock()
        fn()
        synchronize(device)
        samples.append(clock() - start)
    return {"samples_s": samples, "median_s": statistics.median(samples)}


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
