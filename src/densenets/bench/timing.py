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
    """Achieved GFLOP/s of a square matrix product in ``dtype``: the machine's practical peak."""
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = time_interleaved({"mm": lambda: a @ b}, device, reps=reps, warmup=2)
    return 2 * size**3 / timing["mm"]["median_s"] / 1e9


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
