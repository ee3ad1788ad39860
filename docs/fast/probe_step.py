"""Training-step throughput of candidate networks for the fast recipe, on this machine.

    python docs/fast/probe_step.py OUT.json [--models densenet_bc40_k12,...] [--batch 256] [--steps 6]
        [--sizes 32] [--compile]

Times the engine's own training step (``engine.loop.train_step``: forward, loss, backward, SGD
with Nesterov momentum) on random batches (32x32, or each of --sizes), fp32 and bf16 autocast, in
the engine's layout for the precision, after two warm-up steps; with --compile each setting is
timed again with the model under ``torch.compile`` (as ``densenets train --compile`` runs it), and
the first step's seconds, compilation included, are kept. Prints images/s, the step's FLOPs
counted by ``torch.utils.flop_counter`` and the FLOP rate they reach, and writes them with the CPU
read from /proc/cpuinfo. A probe, not a benchmark against peers: it only ranks our candidates.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from densenets.engine.flops import count_train_step
from densenets.engine.loop import TrainState, train_step
from densenets.engine.recipes import Recipe
from densenets.engine.runtime import make_runtime, tune_cpu_allocator
from densenets.hardware import cpu_info
from densenets.models import create_model


def probe(name: str, batch: int, amp: str, steps: int, size: int = 32, compiled: bool = False) -> dict:
    recipe = Recipe(model=name, data="cifar10+", amp=amp, batch_size=batch, device="cpu")
    runtime = make_runtime(recipe)
    model = create_model(name).to(memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    state = TrainState(model.train(), optimizer)
    images = runtime.to_device(torch.randn(batch, 3, size, size))
    targets = torch.randint(0, 10, (batch,))
    flops = count_train_step(model, images, targets, runtime, recipe)
    if compiled:
        state.model = torch.compile(model)
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        train_step(state, images, targets, runtime, 0.05)
        times.append(time.perf_counter() - start)
    first, seconds = times[0], statistics.median(times[2:])  # the first step compiles; two warm up
    return {
        "model": name, "batch": batch, "size": size, "amp": amp, "channels_last": runtime.channels_last,
        "compile": compiled, "first_step_s": first,
        "step_s": seconds, "images_per_s": batch / seconds, "step_flops": flops,
        "gflops_per_s": flops / seconds / 1e9, "epoch_s_50k": 50_000 / (batch / seconds),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", default="densenet_bc40_k12,densenet_bc28_k24,densenet_bc40_k24,densenet_bc16_k48")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--amps", default="none,bf16")
    parser.add_argument("--sizes", default="32", help="image sizes, comma-separated (progressive resizing)")
    parser.add_argument("--compile", action="store_true", help="also time each setting under torch.compile")
    args = parser.parse_args()
    tune_cpu_allocator()
    rows = []
    for name in args.models.split(","):
        modes = (False, True) if args.compile else (False,)
        settings = [(a, int(s), c) for a in args.amps.split(",") for s in args.sizes.split(",") for c in modes]
        for amp, size, compiled in settings:
            row = probe(name, args.batch, amp, args.steps, size, compiled)
            rows.append(row)
            mode = "compiled" if compiled else "eager"
            print(f"{name:20s} {amp:5s} b{args.batch} {size}px {mode:8s} {row['images_per_s']:7.1f} img/s  "
                  f"{row['step_flops'] / args.batch / 1e9:.3f} GFLOP/img  {row['gflops_per_s']:6.1f} GFLOP/s  "
                  f"epoch {row['epoch_s_50k']:6.1f} s  first step {row['first_step_s']:.1f} s", flush=True)  # fmt: skip
    record = {"cpu": cpu_info(), "python": platform.python_version(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
