"""What one 3-D DenseNet-121 training step holds at its peak, per memory-efficient level.

For each level (off, concat = ``set_memory_efficient(True)``, full = ``"full"``) a fresh process
builds ``densenet121`` with ``spatial_dims=3`` (one channel, two classes), runs the bench's
training step (SGD with Nesterov momentum, ``densenets.bench.timing.training_step_fn``) once to
warm up, then measures four further steps:

1. the peak resident size (VmHWM) of one step over the size before it, and over the size before
   the warm-up step (``bench --sections volumes``'s figure); the latter again in a process that
   keeps glibc's default allocator settings (no ``tune_cpu_allocator``);
   then, after ``malloc_trim(0)`` hands glibc's free heap back to the OS, the peak of one more step
   over the trimmed size before it: the step's own increment over the process's live memory;
2. what autograd keeps for backward at the end of forward, by region (stem, each block's first
   half -- concat, BN1, ReLU1, conv1's input -- and second half -- conv1's output, BN2, ReLU2 --,
   each transition, the head), counting each storage once and no parameter;
3. the CPU allocator's own peak during the step (torch.profiler's allocation events), and whether it
   falls in forward, backward or the optimizer step.

    PYTHONPATH=src python docs/volume_memory.py [--size 96] [--batch 2] [--precision fp32|bf16] [--out DIR]

Writes ``DIR/breakdown.json`` and ``DIR/breakdown.md`` (default: print only).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
from pathlib import Path

LEVELS = {"off": False, "concat": True, "full": "full"}
MIB = 2**20


def region(name: str) -> str:
    """Group a module path (``features.denseblock1.denselayer3.norm2``) into a region of the table."""
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "features":
        return "head (norm5, pool, classifier, loss)"
    if parts[1] in ("conv0", "norm0", "relu0", "pool0"):
        return "stem (conv0, norm0, relu0, max pool)"
    if parts[1].startswith("denseblock"):
        if len(parts) < 4:
            return f"{parts[1]}: output concatenation"
        half = "first half (concat-BN1-ReLU1)" if parts[3].endswith("1") else "second half (BN2-ReLU2 of conv1 out)"
        return f"{parts[1]}: {half}"
    if parts[1].startswith("transition"):
        return f"{parts[1]} (BN-ReLU, pool, conv)"
    return "head (norm5, pool, classifier, loss)"


def saved_by_region(model, step) -> dict[str, int]:
    """Bytes autograd holds for backward at the end of one step's forward, per region."""
    import torch

    from densenets.models import recompute

    stack, saved = [""], {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def leave(module, args, output) -> None:  # returns None: the output stays the module's
        stack.pop()

    handles = []
    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: stack.append(n)))
            handles.append(module.register_forward_hook(leave))

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and storage.data_ptr() not in saved:
            saved[storage.data_ptr()] = (storage.nbytes(), region(stack[-1]))
        return t

    # Inside the memory-efficient modes' own hooks ours do not run: count what they keep as it is.
    original = recompute._replace_saved

    def kept_as_is(t) -> bool:
        pack(t)
        return False

    def counting(matches, rebuild, kind):
        return original(lambda t: matches(t) or kept_as_is(t), rebuild, kind)

    recompute._replace_saved = counting
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step(backward=False)
    finally:
        recompute._replace_saved = original
        for h in handles:
            h.remove()
    out: dict[str, int] = {}
    for nbytes, where in saved.values():
        out[where] = out.get(where, 0) + nbytes
    return dict(sorted(out.items()))


def allocator_peak(step) -> dict:
    """The CPU allocator's peak over one step (bytes above its start) and the phase it falls in."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(phases=True)
    allocations, phases, stack = [], {}, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            fields = event.extra_fields
            allocations.append((event.start_time_ns, fields.total_allocated, fields.alloc_size))
        elif event.name in ("forward", "backward", "optimizer"):
            phases[event.name] = (event.start_time_ns, event.end_time_ns)
    allocations.sort()
    start = allocations[0][1] - allocations[0][2]  # allocated before the step's first allocation
    at, total, _ = max(allocations, key=lambda a: a[1])
    phase = next((name for name, (begin, end) in phases.items() if begin <= at <= end), "between phases")
    return {"bytes": total - start, "phase": phase}


def worker(level: str, size: int, batch: int, precision: str, tuned: bool = True) -> dict:
    import torch
    import torch.nn.functional as F

    from densenets import create_model
    from densenets.bench.memory import _peak_rss_bytes, _reset_peak, _rss_bytes
    from densenets.engine.runtime import tune_cpu_allocator

    if tuned:
        tune_cpu_allocator()  # as the bench and densenets train do
    torch.manual_seed(0)
    model = create_model("densenet121", spatial_dims=3, in_channels=1, num_classes=2)
    model.set_memory_efficient(LEVELS[level])
    model.train()
    x = torch.randn(batch, 1, size, size, size)
    y = torch.randint(0, 2, (batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    amp = torch.bfloat16 if precision == "bf16" else None
    from torch.profiler import record_function

    def step(backward: bool = True, phases: bool = False) -> None:  # the bench's training step
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu", dtype=amp, enabled=amp is not None)
        with record_function("forward") if phases else _nothing(), autocast:
            loss = F.cross_entropy(model(x).float(), y)
        if backward:
            with record_function("backward") if phases else _nothing():
                loss.backward()
            with record_function("optimizer") if phases else _nothing():
                optimizer.step()

    before = _rss_bytes()
    step()  # warm-up
    base = _rss_bytes()
    _reset_peak()
    step()
    rss_peak, bench_peak = _peak_rss_bytes() - base, _peak_rss_bytes() - before  # the bench: over the warm-up's start
    if not tuned:
        return {"level": level, "bench_rss_peak_bytes": bench_peak}
    # The same step again after glibc hands its free heap back (malloc_trim): the baseline is then the
    # process's live memory (libraries, model, gradients, momentum, caches), not pages a step freed.
    untrimmed = _rss_bytes()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = _rss_bytes()
    _reset_peak()
    step()
    trim = {"returned_bytes": untrimmed - trimmed, "baseline_bytes": trimmed - before,
            "step_peak_bytes": _peak_rss_bytes() - trimmed}  # fmt: skip
    saved = saved_by_region(model, step)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"level": level, "rss_peak_bytes": rss_peak, "bench_rss_peak_bytes": bench_peak, "saved_bytes": saved,
            "parameter_bytes": params, "after_malloc_trim": trim,
            "allocator_peak": allocator_peak(step)}  # fmt: skip


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def table(results: list[dict], size: int, batch: int, precision: str) -> list[str]:
    levels = [r["level"] for r in results]
    regions = sorted({k for r in results for k in r["saved_bytes"]})
    lines = [f"### What a 3-D DenseNet-121 step holds, {size}^3, batch {batch}, {precision} (MiB)", "",
             "| | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]  # fmt: skip
    rows = [(f"saved for backward: {w}", [r["saved_bytes"].get(w, 0) / MIB for r in results]) for w in regions]
    rows += [
        ("**saved for backward, total**", [sum(r["saved_bytes"].values()) / MIB for r in results]),
        ("parameters (gradients as much again, momentum too)", [r["parameter_bytes"] / MIB for r in results]),
        ("allocator peak of the step over its start", [r["allocator_peak"]["bytes"] / MIB for r in results]),
        ("resident peak of the step over the size before it", [r["rss_peak_bytes"] / MIB for r in results]),
        ("resident peak over the size before the warm-up step (the bench's figure)",
         [r["bench_rss_peak_bytes"] / MIB for r in results]),
        ("the same, glibc's default allocator settings (no tune_cpu_allocator)",
         [r["default_allocator"]["bench_rss_peak_bytes"] / MIB for r in results]),
        ("resident size malloc_trim returned to the OS after the second step",
         [r["after_malloc_trim"]["returned_bytes"] / MIB for r in results]),
        ("resident size after it over the size before the warm-up step (gradients, momentum, caches)",
         [r["after_malloc_trim"]["baseline_bytes"] / MIB for r in results]),
        ("**resident peak of a third step over the trimmed size before it** (the step's own increment)",
         [r["after_malloc_trim"]["step_peak_bytes"] / MIB for r in results]),
    ]  # fmt: skip
    for label, values in rows:
        lines.append(f"| {label} | " + " | ".join(f"{v:.0f}" for v in values) + " |")
    lines.append("| phase of the allocator peak | " + " | ".join(r["allocator_peak"]["phase"] for r in results) + " |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--levels", default="off,concat,full")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--default-allocator", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.batch, args.precision, not args.default_allocator)))
        return
    results = []
    for level in args.levels.split(","):
        runs = []
        for extra in ([], ["--default-allocator"]):
            cmd = [sys.executable, __file__, "--worker", level, "--size", str(args.size), "--batch", str(args.batch),
                   "--precision", args.precision, *extra]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"level {level}: {done.stderr.strip()[-2000:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        results.append({**runs[0], "default_allocator": runs[1]})
    from densenets.hardware import cpu_info

    c = cpu_info()
    cpu = (f"{c['model_name']} ({c['vendor']}, family {c['family']} model {c['model']}), {c['logical_cpus']} logical "
           f"CPUs at {c['mhz']:.0f} MHz as /proc/cpuinfo reports")  # fmt: skip
    lines = [f"CPU: {cpu}", "", *table(results, args.size, args.batch, args.precision)]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "PYTHONPATH=src python docs/volume_memory.py " + " ".join(sys.argv[1:])
        record = {"command": command, "size": args.size, "batch": args.batch, "precision": args.precision}
        record["levels"] = results
        (args.out / "breakdown.json").write_text(json.dumps(record, indent=1) + "\n")
        (args.out / "breakdown.md").write_text("\n".join([f"`{command}`", "", *lines]) + "\n")


if __name__ == "__main__":
    main()
