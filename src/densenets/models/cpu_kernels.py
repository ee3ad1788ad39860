"""Fused BatchNorm+ReLU kernels for the concatenated features of a dense block (CPU).

``cpu_kernels.c`` is compiled once per machine with the system C compiler into
``~/.cache/densenets`` (override with ``DENSENETS_CACHE``) and loaded with ctypes. Where
no compiler is available, or with ``DENSENETS_KERNELS=0``, the same three functions run
as plain PyTorch ops: identical results, more memory traffic.

All tensors are float32 on the CPU; "rows" views are 2-D with unit stride along channels
(a slice ``buffer[:, :C]`` of an NHWC buffer qualifies).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("cpu_kernels.c")
_lock = threading.Lock()
_state: dict = {}


def _cache_dir() -> Path:
    if os.environ.get("DENSENETS_CACHE"):
        return Path(os.environ["DENSENETS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "densenets"


def _cpu_signature() -> str:
    # -march=native code is only valid on CPUs with the same features: key the cache by them.
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def _compile(cc: str, source: Path, target: Path) -> bool:
    attempts = (["-O3", "-march=native", "-pthread"], ["-O3", "-pthread"])
    for flags in attempts:
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cc, *flags, "-shared", "-fPIC", str(source), "-o", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is not None and done.returncode == 0:
            os.replace(tmp, target)
            return True
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return False


def _load() -> ctypes.CDLL | None:
    if os.environ.get("DENSENETS_KERNELS", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc or not _SOURCE.exists():
        return None
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + cc.encode() + _cpu_signature().encode() + platform.machine().encode())
    try:
        folder = _cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"cpu_kernels-{key.hexdigest()[:16]}.so"
        if not target.exists() and not _compile(cc, _SOURCE, target):
            return None
        lib = ctypes.CDLL(str(target))
    except OSError:
        return None
    i64, ptr, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    lib.bn_relu_forward.argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, i64, cint]
    lib.bn_relu_backward_reduce.argtypes = [ptr, i64, ptr, i64, i64, i64, ptr, ptr, ptr, ptr, cint]
    lib.bn_relu_backward_reduce.restype = cint
    lib.bn_relu_backward_apply.argtypes = [ptr, i64, ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, i64, cint]
    lib.column_sums.argtypes = [ptr, i64, i64, i64, ptr, ptr, cint]
    lib.column_sums.restype = cint
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None when they are unavailable (then PyTorch ops are used)."""
    with _lock:
        if "lib" not in _state:
            _state["lib"] = _load()
        return _state["lib"]


def available() -> bool:
    return library() is not None


@contextlib.contextmanager
def fallback():
    """Use the PyTorch versions of the kernels inside this block (tests, comparisons)."""
    with _lock:
        saved = _state.get("lib", "unset")
        _state["lib"] = None
    try:
        yield
    finally:
        with _lock:
            if saved == "unset":
                _state.pop("lib", None)
            else:
                _state["lib"] = saved


def _rows_ok(*tensors: Tensor) -> bool:
    return all(
        t.dtype == torch.float32 and t.device.type == "cpu" and t.dim() == 2 and t.stride(1) == 1 for t in tensors
    )


def _p(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def column_mean_var(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance over rows ``x`` (P, C), as BatchNorm computes them."""
    P, C = x.shape
    lib = library()
    if lib is not None and _rows_ok(x):
        s1 = torch.empty(C, dtype=torch.float64)
        s2 = torch.empty(C, dtype=torch.float64)
        if lib.column_sums(_p(x), x.stride(0), P, C, _p(s1), _p(s2), _threads()) == 0:
            mean = s1 / P
            return mean.float(), (s2 / P - mean * mean).clamp_(min=0).float()
    var, mean = torch.var_mean(x, dim=0, correction=0)
    return mean, var


def bn_relu_forward(x: Tensor, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``relu(a * x + b)`` per channel over rows ``x`` (P, C); returns a contiguous (P, C) tensor."""
    P, C = x.shape
    out = x.new_empty(P, C) if out is None else out
    lib = library()
    a, b = a.contiguous(), b.contiguous()
    if lib is not None and _rows_ok(x, out):
        lib.bn_relu_forward(_p(x), x.stride(0), P, C, _p(a), _p(b), _p(out), out.stride(0), _threads())
        return out
    torch.addcmul(b, x, a, out=out)
    return out.clamp_(min=0)


def bn_relu_backward_reduce(grad: Tensor, x: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """With ``g = grad * (a x + b > 0)``: per-channel ``sum(g)`` and ``sum(g * x)`` (float64)."""
    P, C = x.shape
    a, b = a.contiguous(), b.contiguous()
    lib = library()
    if lib is not None and _rows_ok(grad, x):
        s1 = torch.empty(C, dtype=torch.float64)
        s2 = torch.empty(C, dtype=torch.float64)
        status = lib.bn_relu_backward_reduce(
            _p(grad), grad.stride(0), _p(x), x.stride(0), P, C, _p(a), _p(b), _p(s1), _p(s2), _threads()
        )
        if status == 0:
            return s1, s2
    g = torch.where(torch.addcmul(b, x, a) > 0, grad, 0.0)
    return g.sum(0, dtype=torch.float64), (g * x).sum(0, dtype=torch.float64)


def bn_relu_backward_apply(grad: Tensor, x: Tensor, a: Tensor, b: Tensor, k1: Tensor, k2: Tensor, acc: Tensor) -> None:
    """``acc += a * g + k1 + k2 * x`` in place (``acc`` may be a strided view of a buffer)."""
    P, C = x.shape
    a, b, k1, k2 = (t.contiguous() for t in (a, b, k1, k2))
    lib = library()
    if lib is not None and _rows_ok(grad, x, acc):
        lib.bn_relu_backward_apply(
            _p(grad), grad.stride(0), _p(x), x.stride(0), P, C, _p(a), _p(b), _p(k1), _p(k2),
            _p(acc), acc.stride(0), _threads(),
        )  # fmt: skip
        return
    g = torch.where(torch.addcmul(b, x, a) > 0, grad, 0.0)
    acc.add_(g * a + k1 + k2 * x)


def _threads() -> int:
    return int(os.environ.get("DENSENETS_KERNEL_THREADS", 0)) or torch.get_num_threads()
