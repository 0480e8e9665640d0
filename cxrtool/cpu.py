"""This machine's CPU as ``/proc/cpuinfo`` describes it: the one reader of that file.

``auto`` chooses kernels by instruction-set flags (never by vendor name) and every benchmark names
the CPU its figures were measured on.
"""

from __future__ import annotations

import functools
import platform


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    name, flags = platform.processor(), frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == platform.processor():
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
                if flags and name != platform.processor():
                    break
    except OSError:  # not Linux: no flags, the platform's name
        pass
    return name, flags


def cpu_name() -> str:
    """The CPU's model name (``lscpu``'s), or the platform's processor string."""
    return _cpuinfo()[0]


def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU (empty where ``/proc/cpuinfo`` does not exist)."""
    return set(_cpuinfo()[1])
