"""What this CPU computes natively: its feature flags, and whether BF16 is among them. Read by the CPU
precision policy (:mod:`hrx.runtime.precision_policy`) and by ``hrx train --precision auto``."""
from __future__ import annotations

from pathlib import Path

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # either runs BF16 natively (AMX tiles or AVX-512 dot products)


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (first ``flags`` line of ``/proc/cpuinfo``, or of ``cpuinfo`` given as text).
    Empty where there is no /proc/cpuinfo (not Linux): then nothing is assumed."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def bf16_native(flags: frozenset[str]) -> bool:
    """Whether ``flags`` include AMX-BF16 or AVX512-BF16."""
    return any(f in flags for f in BF16_FLAGS)
