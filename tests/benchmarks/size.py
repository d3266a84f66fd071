"""How big the benchmarks run: `smoke` (the default) or `full`.

Smoke runs each benchmark's code path end to end at a small size (fewer rounds, seeds, epochs and
evaluations, a smaller model where the full one is slow) and checks the mechanism; full runs the sizes
BENCHMARKS.md reports and also asserts their targets and floors. Chosen with
`pytest -m benchmark --benchmark-size full` (tests/conftest.py), which sets the environment variable
below before any test module is imported; so a benchmark picks its sizes at import time with `pick`,
and the processes it starts (spawned workers, Ray workers) inherit the variable and pick the same.
"""

from __future__ import annotations

import os
from typing import TypeVar

ENV = "DECOMP_BENCHMARK_SIZE"
SIZES = ("smoke", "full")
DEFAULT = "smoke"

T = TypeVar("T")


def current() -> str:
    """The size this process runs at: the environment variable's value, `smoke` without one."""
    value = os.environ.get(ENV, DEFAULT)
    if value not in SIZES:
        raise ValueError(f"{ENV} must be one of {', '.join(SIZES)}, got {value!r}; set it with --benchmark-size")
    return value


def is_full() -> bool:
    """True at full size: the figures BENCHMARKS.md reports, targets and floors asserted."""
    return current() == "full"


def pick(*, full: T, smoke: T) -> T:
    """The value for the current size, e.g. `ROUNDS = pick(full=9, smoke=2)`."""
    return full if current() == "full" else smoke
