"""What /proc/cpuinfo says of this CPU: its model name and the instruction-set flags Linux lists (those the kernel
enabled). Native code is compiled for these flags, never for what the compiler's native mode reads from cpuid."""

from __future__ import annotations

import platform


def _cpuinfo(field: str) -> str | None:
    """The first value of a /proc/cpuinfo field (None where there is no such file or field)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name.strip().lower() == field:
                    return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str | None:
    return _cpuinfo("model name") or platform.processor() or None


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())
