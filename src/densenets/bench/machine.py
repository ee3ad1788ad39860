"""The most a benchmark's CPU could compute (its fields from ``hardware.cpu_info``).

A measured peak above ``cores x FLOP per cycle x clock`` cannot come from this CPU: the
harness flags it (a timer, a lazy kernel or a wrong FLOP count is then to blame).
"""

from __future__ import annotations


def flops_per_cycle(info: dict, precision: str) -> int | None:
    """Peak FLOP per cycle of one core (an FMA counts 2) in ``precision``, from the vector units.

    Two FMA pipes per core throughout: 512 bits wide with AVX-512 (Intel server cores, AMD Zen 5),
    256 bits wide on AMD Zen 4 (family 25, which splits AVX-512 into two halves) and AVX2 cores.
    bf16 dot products (AVX512_BF16) double fp32's rate; AMX tiles are far beyond: not bounded here.
    """
    flags = set(info.get("flags") or ())
    if not flags:
        return None
    if precision == "bf16" and "amx_bf16" in flags:
        return None
    if "avx512f" in flags and not (info.get("vendor") == "AuthenticAMD" and (info.get("family") or 0) < 26):
        fp32 = 2 * 16 * 2
    elif "fma" in flags:
        fp32 = 2 * 8 * 2
    else:
        fp32 = 8
    if precision == "fp32":
        return fp32
    if precision == "bf16":
        return 2 * fp32 if "avx512_bf16" in flags else fp32
    return None


def physical_peak_gflops(info: dict, precision: str) -> float | None:
    """cores x FLOP per cycle x clock (GFLOP/s), or None when unknown. The clock is the one
    /proc/cpuinfo reports; a virtual machine often shows its base clock, below the turbo clock."""
    per_cycle = flops_per_cycle(info, precision)
    if per_cycle is None or not info.get("mhz") or not info.get("logical_cpus"):
        return None
    return info["logical_cpus"] * per_cycle * info["mhz"] / 1000.0


def peak_warnings(info: dict, measured: dict[str, float], turbo: float = 1.6) -> list[str]:
    """One line per measured peak that this CPU cannot reach, even at ``turbo`` x the reported clock."""
    lines = []
    for precision, gflops in measured.items():
        bound = physical_peak_gflops(info, precision)
        if bound and gflops > turbo * bound:
            lines.append(
                f"{precision}: measured {gflops:.0f} GFLOP/s is above {turbo:g} x this CPU's physical peak "
                f"({info['logical_cpus']} cores x {flops_per_cycle(info, precision)} FLOP/cycle x "
                f"{info['mhz'] / 1000:.2f} GHz = {bound:.0f}): the timing or the FLOP count is wrong"
            )
    return lines
