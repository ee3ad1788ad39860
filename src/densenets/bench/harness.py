"""``densenets bench``: our DenseNet against the strongest torchvision a user gets in a line.

For every workload (task, model, batch, input size, precision) the contenders are timed
in fresh processes, alternated round by round in one run. torchvision's DenseNet (same
architecture, same weights, outputs checked equal first) runs in NCHW and in
channels_last with the same allocator setting as ours; ONNX Runtime rows run both models
through ONNX Runtime the same way. Every ratio is paired per round against a named
baseline row, and reported as the median with its min-max spread.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..deploy import optimize_for_inference
from ..deploy.choice import CPU_ONLY, NAMES, default_backend, installed
from ..engine.runtime import amp_dtype, default_channels_last, model_stem, resolve_device
from ..hardware import cpu_info
from ..models import create_model
from .machine import peak_warnings, physical_peak_gflops
from .memory import fit_growth, measure_step_memory, plot_memory
from .reference import check_same_outputs, torchvision_twin
from .report import to_markdown
from .timing import matmul_peak_gflops, paired_ratio

SECTIONS = ("train", "infer", "memory", "memory-target", "levers", "openvino-graphs", "serve", "volumes",
            "volumes-openvino")  # fmt: skip
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": None}  # int8: no matmul peak
FP32_REFERENCE = "torchvision channels_last, fp32"
CANDIDATES = {"fp32": ("openvino", "torch"), "bf16": ("openvino", "torch"), "int8": ("openvino", "onnxruntime")}


@dataclass(frozen=True)
class BenchConfig:
    device: str = "auto"
    reps: int = 2  # timed calls per contender process (after the warm-up)
    rounds: int = 5  # processes per contender, alternated round by round
    warmup: int = 1
    precisions: tuple[str, ...] = ("fp32", "bf16")
    sections: tuple[str, ...] = ("train", "infer")
    only: tuple[str, ...] = ()  # run just the workloads whose title contains one of these
    quick: bool = False  # tiny models and batches: checks the harness, measures nothing useful
    out_dir: str = "bench-results"
    log: bool = True
    memory_target: str = ""  # "MODEL:BATCH" for the memory-efficient target; "" = densenet_bc250_k24:64
    ir_cache: str = ""  # folder of converted OpenVINO models shared by a run's rounds ("": a temporary one)


@dataclass(frozen=True)
class Workload:
    task: str  # "train" or "infer"
    model: str
    batch: int
    size: int
    precision: str = "fp32"

    @property
    def title(self) -> str:
        return f"{self.task} {self.model}, batch {self.batch}, {self.size}x{self.size}, {self.precision}"


def workloads(task: str, quick: bool) -> list[tuple[str, int, int]]:
    if quick:
        return [("densenet_bc16_k4", 8, 32)] if task == "train" else [("densenet_bc16_k4", 4, 32)]
    if task == "train":
        return [("densenet_bc100_k12", 64, 32), ("densenet121", 16, 224)]
    return [("densenet121", 16, 224), ("densenet121", 1, 224)]


def ours_channels_last(device: torch.device, precision: str, model: str) -> bool:
    """The training engine's default layout for this device, precision and model (one rule, in runtime)."""
    return default_channels_last(device, amp_dtype("bf16" if precision == "bf16" else "none"), model_stem(model))


def onnxruntime_available(device: torch.device) -> bool:
    return device.type == "cpu" and all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))


def openvino_available(device: torch.device, precision: str = "fp32") -> bool:
    return device.type == "cpu" and installed("openvino", precision)


def contenders(work: Workload, device: torch.device, quick: bool = False) -> dict[str, dict]:
    """label -> worker spec. First ours as a user runs it (the engine's training step;
    ``optimize_for_inference`` at the precision, on the backend it picks); then torchvision in
    both layouts with the same allocator setting, and, for inference on the CPU, torchvision
    through every runtime a user could pick instead: ONNX Runtime, OpenVINO (int8 by NNCF, as
    ours) and ``torch.compile`` with freezing (left out with ``quick``: minutes to compile)."""
    cpu = device.type == "cpu"
    tuned = "tuned" if cpu else "default"
    base = {"task": work.task, "model": work.model, "batch": work.batch, "size": work.size,
            "device": device.type, "precision": work.precision, "form": "module"}  # fmt: skip
    ours_layout = "cl" if ours_channels_last(device, work.precision, work.model) else "nchw"
    ours = {**base, "impl": "densenets", "layout": ours_layout, "allocator": tuned}
    tv = {**base, "impl": "torchvision", "allocator": tuned}
    p = work.precision
    ort, ov = onnxruntime_available(device), openvino_available(device, p)
    specs: dict[str, dict] = {}
    if work.task == "train":
        if p == "int8":
            raise ValueError("bench precision int8: inference only")
        specs["densenets"] = ours
        if cpu:
            specs["densenets, default allocator"] = {**ours, "allocator": "default"}
        specs["torchvision NCHW"] = {**tv, "layout": "nchw"}
        specs["torchvision channels_last"] = {**tv, "layout": "cl"}
        return specs
    if p == "int8" and not (cpu and (ort or ov)):
        raise ValueError("bench precision int8: inference on the CPU with openvino+nncf or onnxruntime installed only")
    chosen = default_backend(p, device.type)
    layout = {backend: "nchw" if backend in CPU_ONLY else "cl" for backend in NAMES}
    specs[f"densenets optimize_for_inference ({NAMES[chosen]})"] = {**ours, "form": "optimized",
                                                                      "layout": layout[chosen]}  # fmt: skip
    for backend in CANDIDATES[p]:  # ours through the other candidate backends: the figures behind the choice
        runs = backend == "torch" or (ov if backend == "openvino" else ort)
        if backend != chosen and runs and cpu:
            specs[f"densenets through {NAMES[backend]}"] = {**ours, "form": "optimized", "backend": backend,
                                                             "layout": layout[backend]}  # fmt: skip
    if p != "int8":  # NCHW ran slower than channels_last for inference in every run (docs/benchmarks.md)
        specs["torchvision channels_last"] = {**tv, "layout": "cl"}
    if ort and p in ("fp32", "int8"):
        specs["torchvision through ONNX Runtime"] = {**tv, "form": "onnxruntime", "layout": "nchw"}
    if ov:
        specs["torchvision through OpenVINO"] = {**tv, "form": "openvino", "layout": "nchw"}
    if p != "int8" and not quick:
        specs["torchvision torch.compile (freezing)"] = {**tv, "form": "compile", "layout": "cl"}
    if p == "int8":
        # int8's targets are stated against torchvision channels_last fp32 too: timed in the same rounds.
        specs[FP32_REFERENCE] = {**tv, "layout": "cl", "precision": "fp32"}
    return specs


def baseline_of(label: str, specs: dict[str, dict], medians: dict[str, float]) -> str:
    """The row a contender is compared with: torchvision through the same runtime (ONNX Runtime
    and OpenVINO rows), else the fastest torchvision contender at the same precision, any runtime
    (the headline's peer: what a user would pick instead of ours)."""
    spec = specs[label]
    runtime = spec.get("backend") if spec["form"] == "optimized" else spec["form"]
    if runtime in ("onnxruntime", "openvino") and spec["impl"] == "densenets":
        return next(k for k, v in specs.items() if v["impl"] == "torchvision" and v["form"] == runtime
                    and v["precision"] == spec["precision"])  # fmt: skip
    rows = [k for k, v in specs.items() if v["impl"] == "torchvision" and v["precision"] == spec["precision"]]
    return min(rows, key=medians.__getitem__)


def _run_worker(spec: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "densenets.bench.worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {spec}: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_rounds(specs: dict[str, dict], cfg: BenchConfig, log) -> dict[str, list[float]]:
    """Per contender, one median time per round; each round runs every contender once, in
    an order rotated each round so that no contender always follows the same one."""
    labels = list(specs)
    per_round: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(cfg.rounds):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]
        for label in order:
            result = _run_worker({**specs[label], "reps": cfg.reps, "warmup": cfg.warmup, "ir_cache": cfg.ir_cache})
            per_round[label].append(result["median_s"])
        log(f"  round {r + 1}/{cfg.rounds} done")
    return per_round


def measure_workload(work: Workload, cfg: BenchConfig, device: torch.device, peaks: dict, log) -> dict:
    specs = contenders(work, device, cfg.quick)
    log(f"{work.title}: {len(specs)} contenders x {cfg.rounds} rounds")
    per_round = time_rounds(specs, cfg, log)
    medians = {label: statistics.median(times) for label, times in per_round.items()}
    flops = paper_flops(work.model, work.size) * work.batch
    if work.task == "train":
        flops *= 3  # forward + backward (about twice the forward)
    rows = []
    for label, times in per_round.items():
        peak = peaks.get(specs[label]["precision"])
        base = baseline_of(label, specs, medians)
        gflops = flops / medians[label] / 1e9
        rows.append(
            {
                "impl": label,
                "setting": {k: specs[label][k] for k in ("impl", "layout", "allocator", "precision", "form")},
                "seconds": medians[label],
                "images_per_s": work.batch / medians[label],
                "seconds_per_round": times,
                "baseline": base,
                "ratio": paired_ratio(per_round[base], times),
                "gflops_per_s": gflops,
                "fraction_of_matmul_peak": gflops / peak if peak else None,
            }
        )
    # Headline: ours as a user runs it (the engine's training step; optimize_for_inference)
    # against the strongest torchvision contender at the same precision.
    first = next(iter(specs))
    best = baseline_of(first, specs, medians)
    headline = {"ours": first, "baseline": best, **paired_ratio(per_round[best], per_round[first])}
    if FP32_REFERENCE in per_round:
        headline["against_fp32"] = {"baseline": FP32_REFERENCE, **paired_ratio(per_round[FP32_REFERENCE],
                                                                                per_round[first])}  # fmt: skip
    return {**asdict(work), "flops": flops, "rows": rows, "headline": headline}


def paper_flops(name: str, size: int) -> int:
    """Forward FLOPs of one image as the paper counts them (transitions convolve, then pool),
    counted on torchvision's twin, which runs in that order."""
    twin = torchvision_twin(create_model(name)).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        twin(torch.zeros(1, 3, size, size))
    return int(counter.get_total_flops())


def check_equal_outputs(name: str, size: int, device: torch.device) -> None:
    """Refuse to time anything whose outputs differ from torchvision's (same weights)."""
    torch.manual_seed(0)
    ours = create_model(name).to(device).eval()
    reference = torchvision_twin(ours).to(device).eval()
    x = torch.randn(2, 3, size, size, device=device)
    check_same_outputs(ours, reference, x)
    check_same_outputs(optimize_for_inference(ours), reference, x)


def speed_section(task: str, cfg: BenchConfig, device: torch.device, peaks: dict, log, save) -> list[dict]:
    results = []
    for name, batch, size in workloads(task, cfg.quick):
        works = [Workload(task, name, batch, size, p) for p in cfg.precisions]
        works = [w for w in works if not cfg.only or any(o in w.title for o in cfg.only)]
        if works:
            check_equal_outputs(name, 64 if size > 64 else size, device)
        for work in works:
            results.append(measure_workload(work, cfg, device, peaks, log))
            save(task, results)  # a long run keeps what it measured so far
    return results


def memory_section(cfg: BenchConfig, device: torch.device, out_dir: Path, log, save) -> dict:
    """Peak memory of a training step against depth, both implementations, both modes;
    then the memory-efficient target (see :func:`efficient_target`)."""
    depths, batch = ((16, 28, 40), 8) if cfg.quick else ((40, 100, 190, 250), 64)
    rows = []
    for depth in depths:
        name = f"densenet_bc{depth}_k{4 if cfg.quick else 12}"
        for impl in ("densenets", "torchvision"):
            for efficient in (False, True):
                log(f"memory {name} batch {batch}: {impl}{', memory-efficient' if efficient else ''}")
                peak = measure_step_memory(name, impl, efficient, batch, 32, device.type)
                label = f"{impl}, {'memory-efficient' if efficient else 'normal'}"
                rows.append({"model": name, "depth": depth, "label": label, "peak_mib": peak / 2**20})
    fits = {}
    for label in sorted({r["label"] for r in rows}):
        pts = [(r["depth"], r["peak_mib"]) for r in rows if r["label"] == label]
        fits[label] = fit_growth([p[0] for p in pts], [p[1] for p in pts])
    plot_path = out_dir / "memory_vs_depth.png"
    plot_memory(rows, str(plot_path))
    result = {"rows": rows, "fits": fits, "plot": str(plot_path)}
    save("memory", result)
    return {**result, "efficient_target": efficient_target(cfg, device, log)}


def parse_memory_target(text: str, quick: bool) -> tuple[str, int]:
    """Parse "MODEL:BATCH"; an empty text gives the issue's case (a tiny one with --quick)."""
    if not text:
        return ("densenet_bc28_k4", 8) if quick else ("densenet_bc250_k24", 64)
    name, sep, batch = text.rpartition(":")
    if not sep or not name or not batch.isdigit() or int(batch) < 1:
        raise ValueError(f"memory target must be MODEL:BATCH, e.g. densenet_bc250_k24:32; got {text!r}")
    return name, int(batch)


def efficient_target(cfg: BenchConfig, device: torch.device, log) -> dict:
    """Memory-efficient mode of one large model: its peak memory and step time against the
    normal mode and against torchvision's own memory-efficient mode, in alternated rounds.
    What was measured before a failure (e.g. out of memory) is kept, with the error."""
    name, batch = parse_memory_target(cfg.memory_target, cfg.quick)
    size = 32
    target: dict = {"model": name, "batch": batch}
    log(f"memory-efficient target: {name} batch {batch}: peak memory and step time")
    try:
        for key, impl, efficient in (("peak_mib_normal", "densenets", False),
                                     ("peak_mib_efficient", "densenets", True),
                                     ("peak_mib_torchvision_efficient", "torchvision", True)):  # fmt: skip
            target[key] = measure_step_memory(name, impl, efficient, batch, size, device.type) / 2**20
        target["memory_ratio"] = target["peak_mib_efficient"] / target["peak_mib_normal"]
        specs = contenders(Workload("train", name, batch, size), device)
        # torchvision's own memory_efficient switch (checkpointing concat-BN-ReLU-conv1), in
        # both layouts with the same allocator setting: the like-for-like contender.
        timed = {
            "normal": specs["densenets"],
            "memory-efficient": {**specs["densenets"], "memory_efficient": True},
            **{f"{label}, memory-efficient": {**specs[label], "memory_efficient": True}
               for label in ("torchvision NCHW", "torchvision channels_last")},
        }  # fmt: skip
        per_round = time_rounds(timed, cfg, log)
    except RuntimeError as exc:  # e.g. the normal mode does not fit in this machine's memory
        log(f"memory-efficient target not measured: {exc}")
        return {**target, "error": str(exc)[:1000]}
    medians = {label: statistics.median(times) for label, times in per_round.items()}
    fastest_tv = min((label for label in timed if label.startswith("torchvision")), key=medians.get)
    return {
        **target,
        "seconds_normal": medians["normal"],
        "seconds_efficient": medians["memory-efficient"],
        "time_ratio": paired_ratio(per_round["memory-efficient"], per_round["normal"]),  # efficient / normal
        "torchvision_row": fastest_tv,
        "seconds_torchvision_efficient": medians[fastest_tv],
        "vs_torchvision": paired_ratio(per_round[fastest_tv], per_round["memory-efficient"]),  # speed-up
    }


def levers_section(cfg: BenchConfig, device: torch.device, log) -> list[dict]:
    """What each setting buys our own model, one at a time."""
    rows = []
    for task, steps in (
        ("train", [("layer by layer, NCHW, default allocator", {"layout": "nchw", "allocator": "default"}),
                   ("+ channels_last", {"layout": "cl", "allocator": "default"}),
                   ("+ tuned allocator (what densenets train uses)", {"layout": "cl", "allocator": "tuned"})]),
        ("infer", [("module, NCHW", {"layout": "nchw"}),
                   ("module, channels_last", {"layout": "cl"}),
                   ("optimize_for_inference (BN folded, shared block buffer)", {"layout": "cl", "form": "optimized"})]),
    ):  # fmt: skip
        name, batch, size = workloads(task, cfg.quick)[0]
        base = {"task": task, "model": name, "batch": batch, "size": size, "device": device.type,
                "precision": "fp32", "impl": "densenets", "allocator": "tuned", "form": "module"}  # fmt: skip
        specs = {label: {**base, **change} for label, change in steps}
        log(f"levers: {task} {name} batch {batch}")
        rows += rows_against_first(time_rounds(specs, cfg, log), "lever", task=task, model=name, batch=batch)
    return rows


def openvino_graphs_section(cfg: BenchConfig, log) -> list[dict]:
    """What each exact reformulation of our graph buys inside OpenVINO, one row each, against
    torchvision's graph through OpenVINO in the same rounds: our module as built (transitions pool
    before their conv), with torchvision's transition order put back, and with every BatchNorm
    that follows a conv folded into it before conversion."""
    rows = []
    name, batch, size = workloads("infer", cfg.quick)[0]
    for precision in [p for p in cfg.precisions if p in ("fp32", "int8")] or ["fp32"]:
        if not openvino_available(torch.device("cpu"), precision):
            raise ValueError("bench section openvino-graphs needs openvino and nncf: pip install 'densenets[openvino]'")
        base = {"task": "infer", "model": name, "batch": batch, "size": size, "device": "cpu", "precision": precision,
                "allocator": "tuned", "layout": "nchw", "form": "openvino"}  # fmt: skip
        specs = {
            "torchvision's graph": {**base, "impl": "torchvision"},
            "ours, conv then pool (torchvision's order)": {**base, "impl": "densenets", "graph": "conv_then_pool"},
            "ours as built (pool before conv)": {**base, "impl": "densenets", "graph": "module"},
            "ours, pool before conv, BatchNorm folded": {**base, "impl": "densenets", "graph": "folded"},
        }
        log(f"openvino graphs: {name} batch {batch}, {precision}")
        per_round = time_rounds(specs, cfg, log)
        rows += rows_against_first(per_round, "graph", model=name, batch=batch, precision=precision)
    return rows


def rows_against_first(per_round: dict[str, list[float]], label_key: str, **fields) -> list[dict]:
    """One row per timed label: its throughput and its per-round speed-up over the first label."""
    first = next(iter(per_round))
    return [{**fields, label_key: label, "images_per_s": fields["batch"] / statistics.median(times),
             "speedup": paired_ratio(per_round[first], times)} for label, times in per_round.items()]  # fmt: skip


def environment(device: torch.device) -> dict:
    info = cpu_info()
    env = {
        "device": device.type,
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "cpu": info["model_name"],
        "cores": info["logical_cpus"],
        "cpuinfo": info,
        "physical_peak_gflops": {p: physical_peak_gflops(info, p) for p in ("fp32", "bf16")},
    }
    for name in ("openvino", "onnxruntime"):
        if importlib.util.find_spec(name):
            env[name] = importlib.import_module(name).__version__
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def run_benchmarks(cfg: BenchConfig) -> dict:
    device = resolve_device(cfg.device)  # the training engine's rule (auto: CUDA when available)
    out_dir = Path(cfg.out_dir)

    def log(message: str) -> None:
        if cfg.log:
            print(f"[bench] {message}", flush=True)

    unknown = sorted(set(cfg.sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    bad = sorted(set(cfg.precisions) - set(PRECISION_DTYPES))
    if bad:
        raise ValueError(f"unknown bench precision(s) {bad}; choose from {', '.join(PRECISION_DTYPES)}")
    parse_memory_target(cfg.memory_target, cfg.quick)  # a bad target fails now, not after the depth table
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="densenets-bench-ir-") as cache:
        # workers convert (and quantize) each OpenVINO contender once, not once per round
        return _run_sections(replace(cfg, ir_cache=cfg.ir_cache or cache), device, out_dir, log)


def _run_sections(cfg: BenchConfig, device: torch.device, out_dir: Path, log) -> dict:
    log("measuring the matrix-multiply peak of each precision")
    measured = sorted(p for p in {"fp32", *cfg.precisions} if PRECISION_DTYPES.get(p) is not None)
    peaks = {p: matmul_peak_gflops(device, PRECISION_DTYPES[p]) for p in measured}
    env = environment(device)
    warnings = peak_warnings(env["cpuinfo"], peaks) if device.type == "cpu" else []
    for line in warnings:
        log(f"WARNING {line}")
    results: dict = {"config": asdict(replace(cfg, ir_cache="")), "environment": {**env, "matmul_peak_gflops": peaks,
                                                            "peak_warnings": warnings}}  # fmt: skip

    def save(section: str, value) -> None:
        results[section] = value
        (out_dir / "results.json").write_text(json.dumps(results, indent=2))
        (out_dir / "results.md").write_text(to_markdown(results))

    for task in ("train", "infer"):
        if task in cfg.sections:
            save(task, speed_section(task, cfg, device, peaks, log, save))
    if "memory" in cfg.sections:
        save("memory", memory_section(cfg, device, out_dir, log, save))
    elif "memory-target" in cfg.sections:
        save("memory", {"efficient_target": efficient_target(cfg, device, log)})
    if "levers" in cfg.sections:
        save("levers", levers_section(cfg, device, log))
    if "openvino-graphs" in cfg.sections:
        save("openvino_graphs", openvino_graphs_section(cfg, log))
    if "serve" in cfg.sections:
        from .serve_load import serve_section

        save("serve", serve_section(cfg.quick, log))
    if "volumes" in cfg.sections:
        from .volumes import volumes_section

        save("volumes", volumes_section(cfg, device, log))
    if "volumes-openvino" in cfg.sections:
        from .volumes_openvino import volumes_openvino_section

        save("volumes_openvino", volumes_openvino_section(cfg, log))
    return results
