"""Peak memory of one training step, and how it grows with depth.

CPU: each measurement runs in a fresh process (``python -m densenets.bench.memory``): the
peak resident memory (VmHWM, reset after a warm-up step) of a second step, minus the
process's size before any step (so memory kept between steps counts).
CUDA: ``torch.cuda.max_memory_allocated`` around the step, in this process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys

import torch

from ..models import create_model
from .reference import torchvision_twin
from .timing import training_step_fn


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where /proc does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def probe_model(name: str, impl: str, memory_efficient: bool, batch: int, size: int, device: torch.device):
    """Model and input of ``impl`` as its default path runs it: ``densenets`` as the training
    engine does (channels_last on the CPU), ``torchvision`` as its DenseNet (NCHW)."""
    if impl not in ("densenets", "torchvision"):
        raise ValueError(f"memory probe: impl must be densenets or torchvision, got {impl!r}")
    torch.manual_seed(0)
    model = create_model(name, memory_efficient=memory_efficient)
    channels_last = impl == "densenets" and device.type == "cpu"
    if impl == "torchvision":
        model = torchvision_twin(model)
        for layer in model.modules():
            if hasattr(layer, "memory_efficient"):  # torchvision's own checkpointing switch
                layer.memory_efficient = memory_efficient
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    return model, x


def _build(name: str, impl: str, memory_efficient: bool, batch: int, size: int, device: torch.device):
    """One training step of ``impl`` (see :func:`probe_model`)."""
    model, x = probe_model(name, impl, memory_efficient, batch, size, device)
    y = torch.randint(0, model.classifier.out_features, (batch,), device=device)
    return training_step_fn(model, x, y)


def measure_step_memory(
    name: str, impl: str, memory_efficient: bool, batch: int = 64, size: int = 32, device: str = "cpu"
) -> int:
    """Bytes of peak memory one training step adds on top of model, optimiser and input."""
    dev = torch.device(device)
    if dev.type == "cuda":
        step = _build(name, impl, memory_efficient, batch, size, dev)
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - base
    cmd = [
        sys.executable,
        "-m",
        "densenets.bench.memory",
        name,
        impl,
        str(int(memory_efficient)),
        str(batch),
        str(size),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        why = "killed (out of memory?)" if done.returncode == -9 else done.stderr.strip()[-500:]
        raise RuntimeError(f"memory probe failed for {name} ({impl}, exit {done.returncode}): {why}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"])


def fit_growth(depths: list[int], values: list[float]) -> dict:
    """Least-squares fits of memory against depth: linear, quadratic, and the log-log slope.

    A slope near 1 means memory grows linearly with depth, near 2 quadratically.
    """
    n = len(depths)
    xs, ys = [float(d) for d in depths], [float(v) for v in values]
    lin = _polyfit(xs, ys, 1)
    quad = _polyfit(xs, ys, 2)
    slope = None
    if n >= 2 and all(v > 0 for v in ys):
        lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
        mx, my = sum(lx) / n, sum(ly) / n
        slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
    return {"linear": lin, "quadratic": quad, "loglog_slope": slope}


def _polyfit(xs: list[float], ys: list[float], degree: int) -> dict:
    import numpy as np

    if len(xs) <= degree:
        return {"coefficients": None, "r2": None}
    coefficients = np.polyfit(xs, ys, degree)
    predicted = np.polyval(coefficients, xs)
    residual = float(((np.array(ys) - predicted) ** 2).sum())
    total = float(((np.array(ys) - np.mean(ys)) ** 2).sum()) or 1.0
    return {"coefficients": [float(c) for c in coefficients], "r2": 1.0 - residual / total}


def plot_memory(rows: list[dict], path: str) -> None:
    """Peak step memory against depth for each implementation/mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in sorted({r["label"] for r in rows}):
        pts = sorted((r["depth"], r["peak_mib"]) for r in rows if r["label"] == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xlabel("depth L (DenseNet-BC, k=12)")
    ax.set_ylabel("peak memory of one training step (MiB)")
    ax.set_title("Memory vs depth, batch 64, 32x32")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _probe(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("impl")
    parser.add_argument("memory_efficient", type=int)
    parser.add_argument("batch", type=int)
    parser.add_argument("size", type=int)
    a = parser.parse_args(argv)
    step = _build(a.name, a.impl, bool(a.memory_efficient), a.batch, a.size, torch.device("cpu"))
    # Baseline: model, gradients-to-be and input, before any step. Then a warm-up step (its
    # one-time allocations are transient), and the peak of the second step over the baseline:
    # memory a step needs, including what an implementation keeps between steps.
    base = _rss_bytes()
    warm = _reset_peak()
    if warm:
        step()
        _reset_peak()
    step()
    print(json.dumps({"peak_bytes": max(_peak_rss_bytes() - base, 0), "after_warmup": warm}))


if __name__ == "__main__":
    _probe(sys.argv[1:])
