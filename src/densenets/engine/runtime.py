"""How a run executes: device, precision, memory format, process rank."""

from __future__ import annotations

import contextlib
import ctypes
import platform
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .distributed import DistInfo
from .recipes import Recipe


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dist: DistInfo
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    @property
    def needs_grad_scaler(self) -> bool:
        return self.amp_dtype == torch.float16


AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype an ``--amp`` name means (``none``: no autocast)."""
    if name not in AMP_DTYPES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_DTYPES)}; got {name!r}")
    return AMP_DTYPES[name]


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); ``None`` when it cannot be read."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:
        return None
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def bf16_cpu_note(runtime: Runtime) -> str | None:
    """A line when bf16 autocast runs on a CPU without native bf16 (emulated: slower than fp32)."""
    if runtime.amp_dtype is not torch.bfloat16 or runtime.device.type != "cpu" or cpu_has_native_bf16() is not False:
        return None
    return (
        "warning: bf16 autocast on a CPU without AVX-512 BF16 or AMX: emulated, usually slower than fp32 "
        "(--amp none trains in fp32)"
    )


def resolve_device(name: str = "auto", dist: DistInfo | None = None) -> torch.device:
    """``auto``: CUDA (this rank's local GPU) when available, else CPU; makes a CUDA device current."""
    dist = dist or DistInfo()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda requested but no CUDA GPU is available (use --device cpu)")
        if device.index is None:
            device = torch.device("cuda", dist.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}")
    return device


def default_channels_last(device: torch.device, amp: torch.dtype | None, stem: str) -> bool:
    """Whether a model with ``stem`` ("cifar" or "imagenet") runs NHWC by default on ``device``
    with autocast ``amp``.

    Measured (docs/benchmarks.md, training steps): without autocast, NHWC is faster on the CPU
    (torchvision's DenseNet-BC-100: 57.1 vs 50.3 img/s, run 10) and slower for fp32 cuDNN
    convolutions (H200: 0.72x on DenseNet-BC-100). Under bf16 autocast the network decides, not
    the image size: the ImageNet-stem DenseNets train faster in NHWC (DenseNet-121 on the CPU
    1.30-1.44x at 64, 112 and 224 px; on the H200 332 vs 241 img/s) and the CIFAR ones in NCHW
    (DenseNet-BC-100 on the CPU 0.73-0.80x at 32, 64 and 128 px; on the H200 1,090 vs 1,581).
    """
    if amp is None:
        return device.type == "cpu"
    return stem == "imagenet"


def model_stem(name: str) -> str:
    """The stem of a registered model ("cifar" or "imagenet"); "cifar" for a name the registry
    does not know (building the model then reports it)."""
    from ..models.registry import UnknownModelError, get_config

    try:
        return get_config(name).stem
    except UnknownModelError:
        return "cifar"


def make_runtime(recipe: Recipe, dist: DistInfo | None = None) -> Runtime:
    dist = dist or DistInfo.from_env()
    device = resolve_device(recipe.device, dist)
    amp = amp_dtype(recipe.amp)
    if amp is torch.float16 and device.type != "cuda":
        raise ConfigError("amp fp16 needs a CUDA GPU; on the CPU use --amp bf16")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = recipe.channels_last
    if channels_last is None:
        channels_last = default_channels_last(device, amp, model_stem(recipe.model))
    return Runtime(device=device, dist=dist, amp_dtype=amp, channels_last=channels_last)


def tune_cpu_allocator() -> bool:
    """Make glibc keep freed memory in the process instead of returning it to the OS.

    Training allocates and frees the same large tensors every step; by default glibc maps
    each tensor over 32 MB fresh from the OS and unmaps it on free, so every step pays
    page faults (10-20% of a CPU training step here). With these two settings the memory is
    reused. Process-wide and permanent: the process keeps its peak memory. Returns whether
    the settings were applied (Linux with glibc only).
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 40))
