"""``densenets bench``: our DenseNet against torchvision's, same architecture, same weights,
same input, timed in one run (round-robin), reported as absolute figures and ratios."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..analysis.summary import count_flops
from ..models import DenseNet, create_model
from ..models.inference import optimize_for_inference
from .memory import fit_growth, measure_step_memory, plot_memory
from .reference import torchvision_twin
from .timing import matmul_peak_gflops

SECTIONS = ("train", "infer", "memory", "levers")


@dataclass(frozen=True)
class BenchConfig:
    device: str = "auto"
    reps: int = 3  # timed steps per contender process
    rounds: int = 2  # processes per contender, alternated round-robin
    amp: str = "none"
    sections: tuple[str, ...] = ("train", "infer", "memory")
    quick: bool = False  # tiny models and batches: checks the harness, measures nothing useful
    out_dir: str = "bench-results"
    log: bool = True


@dataclass
class _Cases:
    train: list = field(default_factory=list)  # (model, batch, size)
    infer: list = field(default_factory=list)
    memory_depths: tuple = ()
    memory_batch: int = 64
    efficient_case: tuple = ()  # (model, batch, size) for the memory-efficient time/memory target


def _cases(quick: bool) -> _Cases:
    if quick:
        return _Cases([("densenet_bc16_k4", 8, 32)], [("densenet_bc16_k4", 1, 32), ("densenet_bc16_k4", 4, 32)],
                      (16, 28, 40), 8, ("densenet_bc28_k4", 8, 32))  # fmt: skip
    return _Cases(
        train=[("densenet_bc100_k12", 64, 32), ("densenet121", 16, 224)],
        infer=[("densenet121", 1, 224), ("densenet121", 16, 224)],
        memory_depths=(40, 100, 190, 250),
        memory_batch=64,
        efficient_case=("densenet_bc250_k24", 64, 32),
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def environment(device: torch.device) -> dict:
    env = {
        "device": device.type,
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    else:
        from ..models import cpu_kernels

        env["fused_cpu_kernels"] = "compiled" if cpu_kernels.available() else "torch fallback"
    return env


@contextlib.contextmanager
def _exact_fp32():
    """Compare in true fp32: TF32 convolutions on NVIDIA GPUs differ by ~1e-3 between algorithms."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _pair(name: str, device: torch.device) -> tuple[DenseNet, torch.nn.Module]:
    """Ours and torchvision's twin with identical weights; checks their outputs agree first."""
    torch.manual_seed(0)
    ours = create_model(name).to(device)
    reference = torchvision_twin(ours).to(device)
    size = 64 if ours.config.stem == "imagenet" else 32
    x = torch.randn(2, 3, size, size, device=device)
    ours.eval()
    reference.eval()
    with torch.no_grad(), _exact_fp32():
        a, b = ours(x), reference(x)
    scale = max(b.abs().max().item(), 1.0)
    if not (a - b).abs().max().item() <= 1e-4 * scale:
        raise AssertionError(f"{name}: our outputs differ from torchvision's; refusing to benchmark")
    return ours, reference


def _run_worker(spec: dict) -> list[float]:
    done = subprocess.run(
        [sys.executable, "-m", "densenets.bench.worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {spec}: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["samples_s"]


def time_contenders(specs: dict[str, dict], cfg: BenchConfig) -> dict[str, dict]:
    """Each contender in fresh processes, alternated round-robin; median over all samples."""
    samples: dict[str, list[float]] = {name: [] for name in specs}
    for _ in range(cfg.rounds):
        for name, spec in specs.items():
            samples[name] += _run_worker({**spec, "reps": cfg.reps})
    return {name: {"median_s": statistics.median(s), "samples_s": s} for name, s in samples.items()}


def train_section(cfg: BenchConfig, device: torch.device, peak: float, log) -> list[dict]:
    rows = []
    cpu = device.type == "cpu"
    for name, batch, size in _cases(cfg.quick).train:
        ours, _ = _pair(name, device)
        flops = 3 * count_flops(ours, size) * batch  # forward + backward (about twice the forward)
        base = {"task": "train", "model": name, "batch": batch, "size": size, "device": device.type, "amp": cfg.amp}
        specs = {"torchvision": {**base, "variant": "torchvision"}}
        if cpu:
            specs["torchvision + tuned allocator"] = {**base, "variant": "torchvision", "tune_allocator": True}
            specs["densenets, default allocator"] = {**base, "variant": "default"}
            specs["densenets"] = {**base, "variant": "default", "tune_allocator": True}
        else:
            specs["torchvision, channels_last"] = {**base, "variant": "torchvision-cl"}
            specs["densenets"] = {**base, "variant": "default"}
        log(f"train {name} batch {batch} {size}x{size}: {', '.join(specs)}")
        rows += _rows("train", name, batch, size, time_contenders(specs, cfg), flops, peak)
    return rows


def infer_section(cfg: BenchConfig, device: torch.device, peak: float, log) -> list[dict]:
    rows = []
    for name, batch, size in _cases(cfg.quick).infer:
        ours, reference = _pair(name, device)
        flops = count_flops(ours, size) * batch
        base = {"task": "infer", "model": name, "batch": batch, "size": size, "device": device.type, "amp": cfg.amp}
        specs = {
            "torchvision": {**base, "variant": "torchvision"},
            "densenets module": {**base, "variant": "default"},
            "densenets optimize_for_inference": {**base, "variant": "optimized"},
        }
        fast = {"densenets optimize_for_inference": optimize_for_inference(ours)}
        if _onnxruntime_available(device):
            label = "densenets optimize_for_inference, onnxruntime"
            fast[label] = optimize_for_inference(ours, backend="onnxruntime")
            specs[label] = {**base, "variant": "onnxruntime"}
        x = torch.randn(batch, 3, size, size, device=device)
        with torch.no_grad(), _exact_fp32():
            expected = reference(x)
            scale = max(expected.abs().max().item(), 1.0)
            for label, module in fast.items():
                if not (module(x) - expected).abs().max().item() <= 1e-4 * scale:
                    raise AssertionError(f"{name}: {label} output differs from torchvision's")
        log(f"infer {name} batch {batch} {size}x{size}: {', '.join(specs)}")
        rows += _rows("infer", name, batch, size, time_contenders(specs, cfg), flops, peak)
    return rows


def _onnxruntime_available(device: torch.device) -> bool:
    return device.type == "cpu" and all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime"))


def _rows(kind: str, name: str, batch: int, size: int, timing: dict, flops: int, peak: float) -> list[dict]:
    base = timing["torchvision"]["median_s"]
    out = []
    for impl, t in timing.items():
        seconds = t["median_s"]
        gflops = flops / seconds / 1e9
        out.append(
            {
                "kind": kind,
                "model": name,
                "batch": batch,
                "size": size,
                "impl": impl,
                "seconds": seconds,
                "images_per_s": batch / seconds,
                "ratio_vs_torchvision": base / seconds,
                "gflops_per_s": gflops,
                "fraction_of_matmul_peak": gflops / peak,
                "samples_s": t["samples_s"],
            }
        )
    return out


def memory_section(cfg: BenchConfig, device: torch.device, out_dir: Path, log) -> dict:
    cases = _cases(cfg.quick)
    rows = []
    contenders = [("densenets", False), ("densenets", True), ("torchvision", False), ("torchvision", True)]
    for depth in cases.memory_depths:
        name = f"densenet_bc{depth}_k12" if not cfg.quick else f"densenet_bc{depth}_k4"
        for impl, efficient in contenders:
            log(f"memory {name} batch {cases.memory_batch}: {impl}{', memory-efficient' if efficient else ''}")
            peak = measure_step_memory(name, impl, efficient, cases.memory_batch, 32, device.type)
            label = f"{impl}, {'memory-efficient' if efficient else 'normal'}"
            rows.append({"model": name, "depth": depth, "label": label, "peak_mib": peak / 2**20})
    fits = {}
    for label in sorted({r["label"] for r in rows}):
        pts = [(r["depth"], r["peak_mib"]) for r in rows if r["label"] == label]
        fits[label] = fit_growth([p[0] for p in pts], [p[1] for p in pts])
    plot_path = out_dir / "memory_vs_depth.png"
    plot_memory(rows, str(plot_path))

    name, batch, size = cases.efficient_case
    log(f"memory-efficient target: {name} batch {batch}: peak memory and step time")
    normal = measure_step_memory(name, "densenets", False, batch, size, device.type)
    efficient = measure_step_memory(name, "densenets", True, batch, size, device.type)
    base = {"task": "train", "model": name, "batch": batch, "size": size, "device": device.type, "variant": "default",
            "tune_allocator": device.type == "cpu"}  # fmt: skip
    timing = time_contenders({"normal": base, "memory-efficient": {**base, "memory_efficient": True}}, cfg)
    target = {
        "model": name,
        "batch": batch,
        "peak_mib_normal": normal / 2**20,
        "peak_mib_efficient": efficient / 2**20,
        "memory_ratio": efficient / normal,
        "seconds_normal": timing["normal"]["median_s"],
        "seconds_efficient": timing["memory-efficient"]["median_s"],
        "time_overhead": timing["memory-efficient"]["median_s"] / timing["normal"]["median_s"] - 1,
    }
    return {"rows": rows, "fits": fits, "plot": str(plot_path), "efficient_target": target}


def levers_section(cfg: BenchConfig, device: torch.device, log) -> list[dict]:
    """Each optimisation switched on one at a time, on our own model."""
    rows = []
    cases = _cases(cfg.quick)
    name, batch, size = cases.train[0]
    base = {"task": "train", "model": name, "batch": batch, "size": size, "device": device.type}
    specs = {
        "layer by layer, NCHW": {**base, "variant": "plain-nchw"},
        "+ channels_last (and pool before transition conv)": {**base, "variant": "plain-cl"},
        "+ fused block (shared buffer, fused BN+ReLU kernels)": {**base, "variant": "default"},
        "+ tuned allocator (what densenets train uses)": {**base, "variant": "default", "tune_allocator": True},
    }
    log(f"levers: training {name}")
    rows += _lever_rows("train", name, batch, time_contenders(specs, cfg))

    name, batch, size = cases.infer[-1]
    base = {"task": "infer", "model": name, "batch": batch, "size": size, "device": device.type}
    specs = {
        "layer by layer, NCHW": {**base, "variant": "plain-nchw"},
        "+ channels_last": {**base, "variant": "plain-cl"},
        "+ fused block": {**base, "variant": "default"},
        "optimize_for_inference (BN folded, one fused pass per BN-ReLU)": {**base, "variant": "optimized"},
    }
    if _onnxruntime_available(device):
        specs["ONNX Runtime (CPU provider)"] = {**base, "variant": "onnxruntime"}
    log(f"levers: inference {name} batch {batch}")
    rows += _lever_rows("infer", name, batch, time_contenders(specs, cfg))
    return rows


def _lever_rows(kind: str, name: str, batch: int, timing: dict) -> list[dict]:
    first = next(iter(timing.values()))["median_s"]
    return [
        {
            "kind": kind,
            "model": name,
            "lever": lever,
            "images_per_s": batch / t["median_s"],
            "speedup": first / t["median_s"],
        }
        for lever, t in timing.items()
    ]


def run_benchmarks(cfg: BenchConfig) -> dict:
    device = _device(cfg.device)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        if cfg.log:
            print(f"[bench] {message}", flush=True)

    unknown = sorted(set(cfg.sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    log("measuring the fp32 matrix-multiply peak")
    peak = matmul_peak_gflops(device)
    results: dict = {"config": asdict(cfg), "environment": {**environment(device), "matmul_peak_gflops": peak}}
    if "train" in cfg.sections:
        results["train"] = train_section(cfg, device, peak, log)
    if "infer" in cfg.sections:
        results["infer"] = infer_section(cfg, device, peak, log)
    if "memory" in cfg.sections:
        results["memory"] = memory_section(cfg, device, out_dir, log)
    if "levers" in cfg.sections:
        results["levers"] = levers_section(cfg, device, log)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(to_markdown(results))
    return results


def to_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"Device: {env.get('gpu', env['cpu'])} ({env['device']}, {env['threads']} threads), torch {env['torch']}; "
        f"fp32 matmul peak {env['matmul_peak_gflops']:.0f} GFLOP/s"
        + (f"; fused CPU kernels: {env['fused_cpu_kernels']}" if "fused_cpu_kernels" in env else ""),
        "",
    ]
    for kind, title in (("train", "Training (forward + backward + SGD step)"), ("infer", "Inference (eval)")):
        if kind not in results:
            continue
        lines += [f"### {title}", "", "| model | batch | input | implementation | images/s | vs torchvision | "
                  "GFLOP/s | % of matmul peak |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in results[kind]:
            lines.append(
                f"| {r['model']} | {r['batch']} | {r['size']}x{r['size']} | {r['impl']} | {r['images_per_s']:.1f} | "
                f"{r['ratio_vs_torchvision']:.2f}x | {r['gflops_per_s']:.0f} | "
                f"{100 * r['fraction_of_matmul_peak']:.0f}% |"
            )
        lines.append("")
    if "memory" in results:
        mem = results["memory"]
        depths = sorted({r["depth"] for r in mem["rows"]})
        labels = sorted({r["label"] for r in mem["rows"]})
        lines += ["### Peak memory of one training step (MiB), DenseNet-BC k=12", ""]
        lines += ["| implementation | " + " | ".join(f"L={d}" for d in depths) + " | log-log slope |"]
        lines += ["|---|" + "---|" * (len(depths) + 1)]
        for label in labels:
            cells = [
                f"{r['peak_mib']:.0f}" for d in depths for r in mem["rows"] if r["label"] == label and r["depth"] == d
            ]
            slope = mem["fits"][label]["loglog_slope"]
            slope_text = f"{slope:.2f}" if slope is not None else "-"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {slope_text} |")
        t = mem["efficient_target"]
        lines += [
            "",
            f"Memory-efficient mode, {t['model']} batch {t['batch']}: peak {t['peak_mib_efficient']:.0f} MiB vs "
            f"{t['peak_mib_normal']:.0f} MiB normal ({100 * t['memory_ratio']:.0f}%), step "
            f"{t['seconds_efficient']:.2f}s vs {t['seconds_normal']:.2f}s ({100 * t['time_overhead']:+.0f}% time).",
            "",
        ]
    if "levers" in results:
        lines += [
            "### Levers, one at a time (our model)",
            "",
            "| task | lever | images/s | speed-up |",
            "|---|---|---|---|",
        ]
        for r in results["levers"]:
            lines.append(f"| {r['kind']} {r['model']} | {r['lever']} | {r['images_per_s']:.1f} | {r['speedup']:.2f}x |")
        lines.append("")
    return "\n".join(lines)
