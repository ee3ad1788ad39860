"""How fast the training input pipeline alone delivers batches, with no model behind it.

``pipeline_throughput`` builds the training loader exactly as ``densenets train`` would
(same sampler, augmentation, worker count, device) and times how many images per second
it yields, the batch on the device included. Compare it with the training step's images/s
(the epoch line of a run): the ratio says whether the model or the loader sets the pace.
"""

from __future__ import annotations

import time

import torch

from .datasets import DataBundle
from .loaders import default_workers, make_train_loader


def pipeline_throughput(
    data: DataBundle,
    loader: str,
    batch_size: int = 64,
    batches: int = 50,
    device: str | torch.device = "cpu",
    workers: int | None = None,
    seed: int = 0,
    channels_last: bool = True,
) -> dict:
    """Images/s of ``batches`` training batches after one untimed batch (workers started).

    Returns the loader, worker count, device, images, seconds, images/s, and how long the
    first batch took (worker start-up included).
    """
    device = torch.device(device)
    started = time.perf_counter()
    train = make_train_loader(data, loader, batch_size, seed, device, workers=workers, channels_last=channels_last)
    train.start_epoch(0, 0)
    batches = max(1, min(batches, len(train) - 1)) if len(train) > 1 else 0
    iterator = iter(train)
    _on_device(next(iterator), device)
    first = time.perf_counter() - started
    images = 0
    tick = time.perf_counter()
    for _ in range(batches):
        x, _labels = _on_device(next(iterator), device)
        images += x.shape[0]
    seconds = time.perf_counter() - tick
    del iterator  # shuts worker processes down
    return {
        "loader": loader,
        "workers": (default_workers(device.type) if workers is None else workers) if loader == "workers" else 0,
        "device": str(device),
        "batch_size": batch_size,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds if seconds > 0 else None,
        "first_batch_seconds": first,
    }


def _on_device(batch, device: torch.device):
    x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return x, y
