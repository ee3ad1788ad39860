"""``densenets bench --sections volumes``: 3-D DenseNet-121 training steps against MONAI's DenseNet121.

For each volume size (96^3 and 128^3, batch 2, one input channel, two classes) and precision
(fp32; bf16 under autocast), four contenders run one training step (forward, backward, SGD with
Nesterov momentum and weight decay, as the engine runs it) in fresh processes, alternated round
by round: ours in the normal mode, ours memory-efficient (``set_memory_efficient(True)``: concat-
BN-ReLU recomputed), ours at the ``"full"`` level, and MONAI's ``DenseNet121`` with the same
weights (its outputs checked equal to ours first). Both take NCDHW tensors and get the same
allocator setting. Each process also records the peak memory of one step after a warm-up step
(CUDA: ``max_memory_allocated`` over what was allocated before it; CPU: the peak resident size
over the size before it). MONAI has no memory-efficient mode, so it has one row. ``--only TEXT``
keeps the workloads whose title contains TEXT, or single contenders: ``--only "128^3, batch 2,
fp32: densenets, normal"`` (a ratio whose reference did not run says so).

``--quick`` runs a tiny DenseNet (growth 4, blocks (2, 2)) at 32^3 on both sides: it checks the
harness, it measures nothing useful. Run as a worker: ``python -m densenets.bench.volumes SPEC``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import torch

SIZES = (96, 128)
BATCH = 2
TINY = {"growth_rate": 4, "block_sizes": (2, 2), "init_channels": 8}  # --quick
CONTENDERS = {  # label -> (impl, memory_efficient level)
    "densenets, normal": ("densenets", False),
    "densenets, memory-efficient": ("densenets", True),
    "densenets, memory-efficient full": ("densenets", "full"),
    "MONAI DenseNet121": ("monai", False),
}


def build(impl: str, quick: bool, memory_efficient: bool | str = False) -> torch.nn.Module:
    """Our 3-D DenseNet-121 (or the tiny one) or MONAI's with the same weights (seed 0)."""
    from ..models import create_model

    torch.manual_seed(0)
    ours = create_model("densenet121", spatial_dims=3, in_channels=1, num_classes=2, **(TINY if quick else {}))
    if impl == "densenets":
        ours.set_memory_efficient(memory_efficient)
        return ours
    if impl != "monai":
        raise ValueError(f"bench volumes: impl must be densenets or monai, got {impl!r}")
    if memory_efficient:
        raise ValueError("bench volumes: MONAI's DenseNet has no memory-efficient mode")
    from monai.networks.nets import DenseNet

    from ..models.weights import to_monai_state_dict

    c = ours.config
    monai = DenseNet(spatial_dims=3, in_channels=1, out_channels=2, init_features=c.init_channels,
                     growth_rate=c.growth_rate, block_config=tuple(c.block_sizes))  # fmt: skip
    monai.load_state_dict(to_monai_state_dict(ours.state_dict()), strict=True)
    return monai


def check_same_outputs(quick: bool, device: torch.device) -> float:
    """Refuse to time models that differ: MONAI's with our weights must give our outputs (eval, fp32)."""
    x = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        ours = build("densenets", quick).to(device).eval()(x)
        theirs = build("monai", quick).to(device).eval()(x)
    diff = (ours - theirs).abs().max().item()
    if not diff <= 1e-4 * max(1.0, ours.abs().max().item()):
        raise RuntimeError(f"MONAI's DenseNet121 with our weights differs from ours by {diff:.3g}: not timed")
    return diff


def _peak_probe(device: torch.device):
    """(reset, read) of this process's peak memory: CUDA allocations, else the resident size (VmHWM)."""
    if device.type == "cuda":
        return torch.cuda.reset_peak_memory_stats, lambda: torch.cuda.max_memory_allocated(device)
    from .memory import _peak_rss_bytes, _reset_peak

    return _reset_peak, _peak_rss_bytes


def run_worker(spec: dict) -> dict:
    """One contender in this process: warm-up steps, the peak memory of one step, then timed steps."""
    from ..engine.runtime import tune_cpu_allocator
    from .memory import _rss_bytes
    from .timing import synchronize, training_step_fn

    device = torch.device(spec["device"])
    if device.type == "cpu":
        tune_cpu_allocator()  # both sides: the setting densenets train applies
    model = build(spec["impl"], spec["quick"], spec["memory_efficient"]).to(device)
    size, batch = spec["size"], spec["batch"]
    x = torch.randn(batch, 1, size, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    step = training_step_fn(model, x, y, torch.bfloat16 if spec["precision"] == "bf16" else None)
    synchronize(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else _rss_bytes()
    reset, read = _peak_probe(device)
    for _ in range(max(1, spec["warmup"])):
        step()
    synchronize(device)
    reset()
    step()
    synchronize(device)
    peak = max(read() - base, 0)
    times = []
    for _ in range(spec["reps"]):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "peak_bytes": peak}


def _spawn(spec: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "densenets.bench.volumes", json.dumps(spec)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        why = "killed (out of memory?)" if done.returncode == -9 else done.stderr.strip()[-800:]
        raise RuntimeError(f"bench volumes worker failed for {spec}: {why}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def volumes_section(cfg, device: torch.device, log) -> dict:
    """The rows of the section: one per size, precision and contender, with paired ratios."""
    from .timing import paired_ratio

    try:
        import monai  # noqa: F401
    except ImportError as exc:
        raise ValueError("bench section volumes compares with MONAI: pip install monai (the dev extra)") from exc
    log(f"volumes: MONAI's DenseNet121 with our weights gives our outputs (max |diff| "
        f"{check_same_outputs(cfg.quick, device):.2e})")  # fmt: skip
    sizes = (32,) if cfg.quick else SIZES
    rows = []
    for size in sizes:
        for precision in [p for p in cfg.precisions if p in ("fp32", "bf16")] or ["fp32"]:
            title = f"volumes {'tiny DenseNet' if cfg.quick else 'densenet121'} {size}^3, batch {BATCH}, {precision}"
            labels = [c for c in CONTENDERS if not cfg.only or any(o in f"{title}: {c}" for o in cfg.only)]
            if not labels:
                continue
            log(f"{title}: {len(labels)} contenders x {cfg.rounds} rounds")
            times: dict[str, list[float]] = {label: [] for label in labels}
            peaks: dict[str, list[int]] = {label: [] for label in labels}
            for r in range(cfg.rounds):
                for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                    impl, efficient = CONTENDERS[label]
                    spec = {"impl": impl, "memory_efficient": efficient, "quick": cfg.quick, "size": size,
                            "batch": BATCH, "precision": precision, "device": device.type,
                            "reps": cfg.reps, "warmup": cfg.warmup}  # fmt: skip
                    result = _spawn(spec)
                    times[label].append(result["median_s"])
                    peaks[label].append(result["peak_bytes"])
            normal, monai = "densenets, normal", "MONAI DenseNet121"
            for label in labels:
                rows.append({
                    "title": title, "size": size, "batch": BATCH, "precision": precision, "contender": label,
                    "seconds": statistics.median(times[label]), "seconds_per_round": times[label],
                    "peak_mib": max(peaks[label]) / 2**20,
                    "memory_vs_normal": max(peaks[label]) / max(max(peaks[normal]), 1) if normal in peaks else None,
                    # > 1: slower than normal
                    "time_vs_normal": paired_ratio(times[label], times[normal]) if normal in times else None,
                    "speedup_vs_monai": paired_ratio(times[monai], times[label]) if monai in times else None,
                })  # fmt: skip
    note = "tiny DenseNet at 32^3 (--quick): checks the harness only" if cfg.quick else "DenseNet-121, batch 2"
    return {"rows": rows, "note": note}


def volumes_table(section: dict) -> list[str]:
    """Markdown: one row per size, precision and contender."""
    lines = [f"### Volumes: 3-D training steps against MONAI's DenseNet121 ({section['note']})", "",
             "| workload | contender | s/step | peak MiB | memory / normal | time / normal | speed-up vs MONAI |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in section["rows"]:
        t, s, m = r["time_vs_normal"], r["speedup_vs_monai"], r["memory_vs_normal"]
        time_vs = "normal not run" if t is None else f"{t['median']:.2f} ({t['min']:.2f}-{t['max']:.2f})"
        speedup = "MONAI not run" if s is None else f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"
        memory = "normal not run" if m is None else f"{m:.2f}"
        lines.append(f"| {r['size']}^3 b{r['batch']} {r['precision']} | {r['contender']} | {r['seconds']:.3f} | "
                     f"{r['peak_mib']:.0f} | {memory} | {time_vs} | {speedup} |")  # fmt: skip
    return [*lines, ""]


if __name__ == "__main__":
    print(json.dumps(run_worker(json.loads(sys.argv[1]))))
