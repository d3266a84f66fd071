"""What this machine and process have now: memory available, the process's resident size (Linux /proc;
None or 0 where it cannot be read)."""

from __future__ import annotations

import os

__all__ = ["available_memory", "resident_memory"]


def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def resident_memory() -> int:
    """Bytes this process holds in memory now (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
