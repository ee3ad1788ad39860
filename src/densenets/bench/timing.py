"""Timing primitives: interleaved medians, the machine's matmul peak, training steps."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, reps: int = 5, warmup: int = 2
) -> dict[str, dict]:
    """Median seconds per call of each function, timed round-robin so that drifts in
    machine speed hit every contender alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
        synchronize(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s), "samples_s": s}
        for name, s in samples.items()
    }


def matmul_peak_gflops(
    device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None, reps: int = 5
) -> float:
    """The best GFLOP/s a dense matrix product reaches here in ``dtype``: the practical peak.

    Two ways are timed and the faster counts: ``torch.mm`` of square matrices, and on the CPU
    a 1x1 convolution (the same product, run by oneDNN). On AMD CPUs torch.mm's BLAS reached
    about half of what oneDNN does (210 vs 440-500 GFLOP/s fp32 on this project's 2-core VM),
    so the mm alone would understate the limit.
    """
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    fns = {"mm": (lambda: a @ b, 2 * size**3)}
    if device.type == "cpu":
        channels, pixels = 512, 64  # (1, 512, 64, 64) x (512, 512, 1, 1): a 4096x512x512 product
        x = torch.randn(1, channels, pixels, pixels, dtype=dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(channels, channels, 1, 1, dtype=dtype).contiguous(memory_format=torch.channels_last)
        fns["conv1x1"] = (lambda: F.conv2d(x, w), 2 * channels * channels * pixels * pixels)
    with torch.no_grad():
        timing = time_interleaved({k: f for k, (f, _) in fns.items()}, device, reps=reps, warmup=2)
    return max(flops / timing[k]["min_s"] / 1e9 for k, (_, flops) in fns.items())


def training_step_fn(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp_dtype: torch.dtype | None = None
) -> Callable[[], None]:
    """One forward + backward + SGD (Nesterov, weight decay) step, as the engine runs it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()

    return step


def inference_fn(model: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None = None) -> Callable[[], None]:
    model.eval()

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            model(x)

    return forward


def paired_ratio(baseline: list[float], ours: list[float]) -> dict:
    """baseline time / our time, round by round: the median and its min-max spread."""
    ratios = [b / o for b, o in zip(baseline, ours, strict=True)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "per_round": ratios}
