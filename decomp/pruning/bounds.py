"""Time and memory bounds on coupling-group discovery.

Torch-Pruning's enumeration of a group can grow without limit on some topologies (index maps through
many slices, rolls and reshapes multiply), in time and in memory, and it runs inside one call decomp
cannot split. `bounded` runs discovery under a timer that checks, four times a second, the elapsed time
of the whole discovery and of the group being enumerated, and how far the process's memory has grown:
a group past its share (time, or memory growth) is interrupted (`GroupLimit`: the group is left out
with the reason), the whole discovery past its cap is ended (`DiscoveryLimit`: a clear error). Both
derive from BaseException so that no `except Exception` inside Torch-Pruning or decomp swallows them.

The timer needs the main thread (signals); elsewhere discovery runs unbounded, as before.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from decomp.resources import available_memory, resident_memory

__all__ = ["Bounds", "DiscoveryLimit", "GroupLimit", "bounded", "DISCOVERY_SECONDS", "GROUP_SECONDS"]

# the whole discovery (dependency graph and every group); the rest of a 10-minute budget is for pruning and its check
DISCOVERY_SECONDS = 420.0
GROUP_SECONDS = 60.0  # one group's enumeration
GROUP_MEMORY = 2 * 2**30  # bytes one group's enumeration may grow the process by
MEMORY_SHARE = 0.6  # of the memory available when discovery starts
TICK = 0.25


class DiscoveryLimit(BaseException):
    """Group discovery ran past its time or memory cap."""


class GroupLimit(BaseException):
    """One group's enumeration ran past its time cap."""


class Bounds:
    """The caps of one discovery; `group()` bounds the enumeration of one group inside it."""

    def __init__(self, seconds: float, memory_bytes: int | None) -> None:
        self.seconds, self.memory_bytes = seconds, memory_bytes
        self.start, self.base = time.monotonic(), resident_memory()
        self.group_deadline: float | None = None
        self.group_seconds, self.group_base = GROUP_SECONDS, 0

    @contextmanager
    def group(self, seconds: float | None = None) -> Iterator[None]:
        seconds = GROUP_SECONDS if seconds is None else seconds
        self.group_deadline, self.group_seconds = time.monotonic() + seconds, seconds
        self.group_base = resident_memory()
        try:
            yield
        finally:
            self.group_deadline = None

    def check(self, *_args) -> None:
        now = time.monotonic()
        if now - self.start > self.seconds:
            raise DiscoveryLimit(f"it ran past its {self.seconds:g} s cap")
        grown = resident_memory() - self.base
        if self.memory_bytes is not None and grown > self.memory_bytes:
            raise DiscoveryLimit(
                f"its memory grew by {grown / 2**30:.1f} GiB, past its {self.memory_bytes / 2**30:.1f} GiB cap "
                f"({MEMORY_SHARE:.0%} of the memory available when it started)"
            )
        if self.group_deadline is None:
            return
        if now > self.group_deadline:
            self.group_deadline = None
            raise GroupLimit(f"Torch-Pruning's enumeration of it ran past {self.group_seconds:g} s")
        grown = resident_memory() - self.group_base
        if grown > GROUP_MEMORY:
            self.group_deadline = None
            raise GroupLimit(
                f"Torch-Pruning's enumeration of it grew memory by {grown / 2**30:.1f} GiB, past "
                f"{GROUP_MEMORY / 2**30:g} GiB"
            )


@contextmanager
def bounded(seconds: float | None = None, memory_bytes: int | None = -1) -> Iterator[Bounds]:
    """Run the body under `Bounds` (seconds None: DISCOVERY_SECONDS; memory_bytes -1: MEMORY_SHARE of
    what is available now, None: no memory cap). Nested use keeps the outer bounds."""
    seconds = DISCOVERY_SECONDS if seconds is None else seconds
    if memory_bytes == -1:
        available = available_memory()
        memory_bytes = int(MEMORY_SHARE * available) if available is not None else None
    bounds = Bounds(seconds, memory_bytes)
    usable = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not usable or signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        yield bounds  # not the main thread, or a timer someone else (an outer discovery) owns: no timer
        return
    previous = signal.signal(signal.SIGALRM, bounds.check)
    signal.setitimer(signal.ITIMER_REAL, TICK, TICK)
    try:
        yield bounds
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
