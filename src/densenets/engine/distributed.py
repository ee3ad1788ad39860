"""torchrun + DDP on the same code path as a single process."""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> DistInfo:
        """Read the variables torchrun sets (absent: one process)."""
        return cls(
            rank=int(os.environ.get("RANK", 0)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
            world_size=int(os.environ.get("WORLD_SIZE", 1)),
        )


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL for CUDA, gloo for CPU) once per process.

    The group stays up until the process exits, so a second ``fit`` in the same processes
    reuses it: a fresh rendezvous after ``destroy_process_group`` on torchrun's store could
    hang (seen: both ranks waiting in gloo's connection setup of the second group).
    """
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)
        atexit.register(shutdown_distributed)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all ranks (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_arrays(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's CPU tensors concatenated along dim 0, in rank order (identity in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(tensors)
    gathered: list[list[torch.Tensor] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, tensors)
    return [torch.cat([parts[i] for parts in gathered]) for i in range(len(tensors))]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def average_buffers(model: torch.nn.Module) -> None:
    """Make BatchNorm running statistics equal on every rank (their mean over ranks).

    DDP broadcasts rank 0's buffers at the start of each forward, so after the last step
    each rank holds its own statistics; evaluation and checkpoints need one set.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world)
        else:
            dist.broadcast(buffer, src=0)


def run_on_main(fn, info: DistInfo):
    """Call ``fn`` on rank 0 only (file writes); if it raises, every rank stops with its error.

    Without this, an error only rank 0 meets (full disk, non-finite weights at save) would
    leave the other ranks waiting in the next collective until the process-group timeout.
    Rank 0 re-raises its own exception; the others raise a :class:`UserError` quoting it.
    """
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    if dist.is_available() and dist.is_initialized():
        flag = torch.tensor([1.0 if error is not None else 0.0])
        if dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag)
        if flag.item() > 0:
            message = [f"{type(error).__name__}: {error}" if error is not None else None]
            dist.broadcast_object_list(message, src=0)
            if error is None:
                raise UserError(f"stopped because rank 0 failed: {message[0]}")
    if error is not None:
        raise error
    return result
