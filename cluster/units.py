"""Quantities in their natural units for tables and plots: 12.3 ms, 1.50MiB, 91.20%, 4.10M.

The kind of a quantity follows from its objective name (`search.objectives.OBJECTIVES`): shares of inputs
or importance are percent, `*bytes` and `peak_memory` bytes, `*_s` seconds, `throughput` samples per second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cluster.render import human

__all__ = ["format_value", "unit_scale"]

SHARES = ("accuracy", "agreement", "accuracy_proxy")  # objectives that are fractions, shown as percent


def _kind(name: str) -> str:
    if name in SHARES:
        return "share"
    if name.endswith("bytes") or name == "peak_memory":
        return "bytes"
    if name.endswith("_s"):
        return "seconds"
    return "rate" if name == "throughput" else "count"


def format_value(name: str, value: float) -> str:
    """`value` of quantity `name` in its natural unit: 12.3 ms, 1.50MiB, 91.20%, 4.10M."""
    if not math.isfinite(value):
        return str(value)
    kind = _kind(name)
    if kind == "share":
        return f"{100 * value:.2f}%"
    if kind == "bytes":
        return human(value, "B")
    if kind == "seconds":
        factor, unit = _seconds(abs(value))
        return f"{value * factor:.3g} {unit}"
    if kind == "rate":
        return f"{value:.4g} samples/s"
    return human(value) if abs(value) >= 1000 or value == int(value) else f"{value:.4g}"


def _seconds(top: float) -> tuple[float, str]:
    for factor, unit in ((1.0, "s"), (1e3, "ms"), (1e6, "µs")):
        if top >= 1.0 / factor:
            return factor, unit
    return 1e9, "ns"


def unit_scale(name: str, values: Sequence[float]) -> tuple[float, str]:
    """(factor, axis label) that shows `values` of quantity `name` in a readable unit."""
    top = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    kind = _kind(name)
    if kind == "share":
        return 100.0, f"{name} (%)"
    if kind == "seconds":
        factor, unit = _seconds(top)
        return factor, f"{name} ({unit})"
    if kind == "rate":
        return 1.0, f"{name} (samples/s)"
    base, prefixes = (1024.0, ("B", "KiB", "MiB", "GiB", "TiB")) if kind == "bytes" else (1000.0, ("", "K", "M", "G"))
    power = 0
    while top >= base and power < len(prefixes) - 1:
        top, power = top / base, power + 1
    unit = prefixes[power]
    return base**-power, f"{name} ({unit})" if unit else name
