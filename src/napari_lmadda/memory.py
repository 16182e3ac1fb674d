"""How much memory one piece of work may take, decided before anything is allocated.

A file's header can declare any size (a 3 MB compressed TIFF can declare 40000x40000 pixels,
a 4 MB model file can hold a 4 GiB pickle). Readers compare what a file *declares* it will
need with :func:`memory_budget` before decoding it, and refuse with one line naming the file
when it does not fit, so a hostile or simply too large file is skipped like a damaged one
instead of exhausting the machine.

The budget is a fraction (:data:`BUDGET_FRACTION`) of the memory this process can still get:
the smallest of the memory the operating system reports as available, the headroom under a
``ulimit -v`` (``RLIMIT_AS``) and the headroom under a cgroup (container) limit. It is taken
afresh at every call, so a reader filling memory file after file gets a smaller budget for
each next file. ``LMADDA_MEMORY_BUDGET`` (bytes, or with a unit: ``512M``, ``2G``) sets it
explicitly.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = [
    "BUDGET_FRACTION",
    "ENV_BUDGET",
    "available_memory",
    "memory_budget",
    "fmt_bytes",
    "parse_bytes",
]

#: Share of the available memory one image, model or plane may take.
BUDGET_FRACTION = 0.5
#: Environment variable that sets the budget explicitly (bytes, or e.g. ``512M``, ``2G``).
ENV_BUDGET = "LMADDA_MEMORY_BUDGET"

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str) -> int:
    """``"512M"`` -> 536870912; plain numbers are bytes (K, M, G, T are powers of 1024).

    Raises
    ------
    ValueError
        Not a size.
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.I)
    if not m:
        raise ValueError(f"not a memory size: {text!r} (use e.g. 512M or 2G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def fmt_bytes(n: float) -> str:
    """``3.2e9`` -> ``"3.0 GiB"``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _system_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported platform: read /proc
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _address_space_headroom() -> int | None:
    """What is left under ``ulimit -v`` (RLIMIT_AS), or None without such a limit."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft in (resource.RLIM_INFINITY, -1) or soft <= 0:
        return None
    used = _virtual_size()
    return max(0, soft - used) if used is not None else soft


def _virtual_size() -> int | None:
    try:
        import psutil

        return int(psutil.Process().memory_info().vms)
    except Exception:
        pass
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_headroom() -> int | None:
    """What is left under a cgroup v2 memory limit (containers, batch schedulers)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        current = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - current)
    except (OSError, ValueError):
        return None


def available_memory() -> int:
    """Bytes this process can still allocate (the smallest of the limits that apply).

    Returns
    -------
    int
        Available memory; 4 GiB when nothing can be measured.
    """
    values = [v for v in (_system_available(), _address_space_headroom(), _cgroup_headroom())
              if v is not None]
    return min(values) if values else 4 * 2**30


def memory_budget() -> int:
    """Bytes one image, plane or model may take: ``LMADDA_MEMORY_BUDGET``, else a fraction.

    Returns
    -------
    int
        The budget in bytes (at least 1 MiB).
    """
    text = os.environ.get(ENV_BUDGET, "").strip()
    if text:
        try:
            return max(2**20, parse_bytes(text))
        except ValueError:
            pass  # a bad setting must not break reading: fall back to the measured budget
    return max(2**20, int(BUDGET_FRACTION * available_memory()))
