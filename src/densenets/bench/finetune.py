"""Fine-tuning DenseNet-121 on large inputs on the CPU: time and peak memory of the engine's training step.

    python -m densenets.bench.finetune --out docs/bench-cpu/finetune [--settings 224:fp32,512:bf16-me --batch 8]

The step timed is the one ``densenets train`` runs (:func:`densenets.engine.loop.train_step`:
gradient accumulation over ``--accum`` chunks, autocast, SGD), on a multi-label head (14
classes, as CheXpert, some labels unknown) with the engine's CPU layout (channels_last)
and allocator setting. By default it times, at 224 and 512 pixels, fp32 and bf16 autocast, each with
and without ``memory_efficient`` (recomputed concatenation + bottleneck in the backward pass).
Every setting runs in a fresh process, alternated round by round; a setting's time is the
median over its rounds, each round's time the median of ``--reps`` steps after ``--warmup``
steps. Peak memory is the process's peak resident size during the timed steps (VmHWM,
reset after the warm-up), and the part of it above the process's size before the first
step (model, optimiser state and the input batch are in the baseline).
Writes results.json and results.md to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

NUM_CLASSES = 14  # CheXpert's findings


def probe(
    size: int,
    batch: int,
    accum: int,
    amp: str,
    memory_efficient: bool,
    reps: int,
    model: str,
    warmup: int = 1,
    threads: int = 0,
    clock=time.perf_counter,
) -> dict:
    """One setting in this process: ``warmup`` steps, then ``reps`` timed steps (``threads`` 0: torch's default;
    ``clock``: seconds, replaceable in tests)."""
    from ..engine.loop import TrainState, train_step
    from ..engine.recipes import Recipe
    from ..engine.runtime import make_runtime, tune_cpu_allocator
    from ..models import create_model
    from .memory import _peak_rss_bytes, _reset_peak, _rss_bytes

    if threads:
        torch.set_num_threads(threads)
    tune_cpu_allocator()  # as densenets train does on the CPU
    runtime = make_runtime(Recipe(device="cpu", amp=amp, model=model))  # its layout rule, for this model
    torch.manual_seed(0)
    net = create_model(model, num_classes=NUM_CLASSES, memory_efficient=memory_efficient)
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    state = TrainState(net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4))
    x = runtime.to_device(torch.randn(batch, 3, size, size))
    y = torch.randint(0, 2, (batch, NUM_CLASSES)).float()
    y[torch.rand(batch, NUM_CLASSES) < 0.1] = float("nan")  # unknown labels, masked
    net.train()
    before = _rss_bytes()
    for _ in range(warmup):  # allocator pools, oneDNN primitives, optimiser state
        train_step(state, x, y, runtime, 0.01, accum_steps=accum)
    exact = _reset_peak()
    times = []
    for _ in range(reps):
        start = clock()
        loss, _ = train_step(state, x, y, runtime, 0.01, accum_steps=accum)
        loss.item()
        times.append(clock() - start)
    peak = _peak_rss_bytes()
    return {
        "seconds": statistics.median(times),
        "times": times,
        "peak_rss_bytes": peak,
        "step_bytes": peak - before,
        "peak_reset": exact,
        "channels_last": runtime.channels_last,
    }


def run(args) -> dict:
    settings = [parse_setting(text) for text in args.settings.split(",")]
    per_round: dict[int, list[dict]] = {i: [] for i in range(len(settings))}
    for r in range(args.rounds):
        for i, s in enumerate(settings):
            spec = {**s, "batch": args.batch, "accum": args.accum, "reps": args.reps, "model": args.model,
                    "warmup": args.warmup, "threads": args.threads}  # fmt: skip
            result = run_probe(spec)
            per_round[i].append(result)
            print(f"[finetune bench] round {r + 1}/{args.rounds} {_title(s)}: {result['seconds']:.2f} s/step, "
                  f"peak {result['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)  # fmt: skip
    rows = []
    for i, s in enumerate(settings):
        base = next((j for j, b in enumerate(settings) if b["size"] == s["size"] and b["amp"] == "none"
                     and not b["memory_efficient"]), None)  # fmt: skip
        speedup = None  # no fp32 setting at this size was timed: no ratio, rather than one against itself
        if base is not None:
            ratios = [b["seconds"] / o["seconds"] for b, o in zip(per_round[base], per_round[i], strict=True)]
            speedup = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
        seconds = statistics.median(r["seconds"] for r in per_round[i])
        rows.append({
            **s,
            "seconds_per_step": seconds,
            "images_per_s": args.batch / seconds,
            "speedup_vs_fp32": speedup,
            "peak_rss_gib": max(r["peak_rss_bytes"] for r in per_round[i]) / 2**30,
            "step_gib": max(r["step_bytes"] for r in per_round[i]) / 2**30,
            "rounds": per_round[i],
        })  # fmt: skip
    return {
        "config": vars(args),
        "environment": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "threads": args.threads or torch.get_num_threads(),
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
        "rows": rows,
    }


def run_probe(spec: dict) -> dict:
    """One setting's probe in a fresh process (no allocator pools or caches carried over)."""
    cmd = [sys.executable, "-m", "densenets.bench.finetune", "--probe", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = "killed (out of memory?)" if done.returncode == -9 else done.stderr.strip()[-500:]
        raise SystemExit(f"probe failed for {spec}: {why}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_setting(text: str) -> dict:
    """``SIZE:PRECISION[-me]``, e.g. ``512:bf16-me``: input size, fp32 or bf16 autocast, memory-efficient."""
    size, _, mode = text.strip().partition(":")
    precision, _, efficient = mode.partition("-")
    if precision not in ("fp32", "bf16") or efficient not in ("", "me"):
        raise SystemExit(f"setting {text!r}: expected SIZE:fp32|bf16[-me], e.g. 512:bf16-me")
    return {"size": int(size), "amp": "bf16" if precision == "bf16" else "none", "memory_efficient": efficient == "me"}


def _title(s: dict) -> str:
    efficient = " memory-efficient" if s["memory_efficient"] else ""
    return f"{s['size']}px {'bf16' if s['amp'] == 'bf16' else 'fp32'}{efficient}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def to_markdown(results: dict) -> str:
    c, env = results["config"], results["environment"]
    lines = [
        f"Fine-tuning {c['model']} ({NUM_CLASSES}-class multi-label head), batch {c['batch']} as {c['accum']} "
        f"accumulated chunks, on {env['cpu']} ({env['cores']} cores, {env['threads']} thread(s)), "
        f"torch {env['torch']}; "
        f"median of {c['rounds']} alternated rounds of {c['reps']} steps after {c['warmup']} warm-up step(s); "
        "random weights (the step costs the same as from pretrained ones).",
        "",
        "| input | precision | memory-efficient | s / step | images / s | vs fp32 (median, min-max) | peak memory "
        "(GiB) | of it, the step (GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        ratio = r["speedup_vs_fp32"]
        versus = f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else "no fp32 row timed"
        lines.append(
            f"| {r['size']}x{r['size']} | {'bf16 autocast' if r['amp'] == 'bf16' else 'fp32'} | "
            f"{'yes' if r['memory_efficient'] else 'no'} | {r['seconds_per_step']:.2f} | {r['images_per_s']:.2f} | "
            f"{versus} | {r['peak_rss_gib']:.2f} | "
            f"{r['step_gib']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one setting, JSON
    parser.add_argument("--model", default="densenet121")
    parser.add_argument(
        "--settings",
        default="224:fp32,224:fp32-me,224:bf16,224:bf16-me,512:fp32,512:fp32-me,512:bf16,512:bf16-me",
        help="comma-separated SIZE:fp32|bf16[-me] (-me: memory-efficient); speed-ups are against SIZE:fp32",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per probe (0: torch's default, one per core)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench-results/finetune")
    args = parser.parse_args(argv)
    if args.probe:
        spec = json.loads(args.probe)
        result = probe(spec["size"], spec["batch"], spec["accum"], spec["amp"], spec["memory_efficient"],
                       spec["reps"], spec["model"], spec["warmup"], spec["threads"])  # fmt: skip
        print(json.dumps(result))
        return
    results = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(to_markdown(results) + "\n")
    print(to_markdown(results))


if __name__ == "__main__":
    main()
