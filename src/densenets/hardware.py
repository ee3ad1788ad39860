"""The machine this process runs on: its CPU, read from ``/proc/cpuinfo``.

The bottom layer, so that a training run can record where it ran and a benchmark where it
measured (``bench.machine`` bounds the peak FLOP rate from the same fields).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_info(path: str | Path = "/proc/cpuinfo") -> dict:
    """Model name, vendor, family/model, flags, logical CPUs, cores and clock (MHz) of this CPU."""
    try:
        text = Path(path).read_text()
    except OSError as exc:  # flags None: unknown, not "none" (AVX-512 does not imply VNNI or bf16)
        return {"model_name": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
                "flags": None, "unreadable": f"{path}: {exc.strerror or exc}"}  # fmt: skip
    first: dict[str, str] = {}
    mhz = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        first.setdefault(key, value)
        if key == "cpu MHz":
            mhz.append(float(value))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model_name": first.get("model name", platform.machine()),
        "vendor": first.get("vendor_id"),
        "family": int(first["cpu family"]) if "cpu family" in first else None,
        "model": int(first["model"]) if first.get("model", "").isdigit() else None,
        "flags": sorted(first.get("flags", "").split()),
        "logical_cpus": usable,
        "cores_per_socket": int(first["cpu cores"]) if "cpu cores" in first else None,
        "mhz": max(mhz) if mhz else None,
    }
