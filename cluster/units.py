"""Quantities in their natural units for tables and plots: 12.3 ms, 1.50MiB, 91.20%, 4.10M.

The kind of a quantity follows from its objective name (`search.objectives.OBJECTIVES`): shares of inputs
or importance are percent, `*bytes` and `peak_memory` bytes, `*_s` seconds, `throughput` samples per second.
A search costs its graph at one micro-batch of `latency.batch_size` samples: quantities proportional to it
(`PER_BATCH`: MACs, bytes sent between parts) are shown per sample (`per_sample`, `label`), the others as costed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cluster.render import human

__all__ = ["PER_BATCH", "format_value", "label", "per_sample", "short_name", "unit_scale"]

SHARES = ("accuracy", "agreement", "accuracy_proxy")  # objectives that are fractions, shown as percent
PER_BATCH = ("macs", "comm_bytes")  # costed for the graph's batch, proportional to it
SHORT = {  # column headings that fit an 80-column table
    "accuracy": "val acc",  # selection reads the validation split; the test split is reported beside it
    "agreement": "agree",
    "accuracy_proxy": "proxy",
    "macs": "MACs",
    "nonzero_params": "nonzero",
    "size_bytes": "size",
    "latency_s": "latency",
    "bottleneck_s": "bottleneck",
    "comm_bytes": "comm",
    "peak_memory": "memory",
    "test_accuracy": "test acc",
    "test_agreement": "test agree",
}


def short_name(name: str) -> str:
    """A short heading for quantity `name`: `val acc`, `MACs`, `comm`, `memory` (the name itself otherwise)."""
    return SHORT.get(name, name)


def per_sample(name: str, value: float, batch: int) -> float:
    """`value` of `name` for one sample, where it was costed for a batch of `batch` samples (`PER_BATCH`)."""
    return value / batch if name in PER_BATCH else value


def label(name: str, short: bool = False) -> str:
    """How quantity `name` is called where its per-sample value is shown: `macs/sample`, `MACs/sample`."""
    text = short_name(name) if short else name
    return f"{text}/sample" if name in PER_BATCH else text


def _kind(name: str) -> str:
    if name.removeprefix("test_") in SHARES:
        return "share"
    if name.endswith("bytes") or name == "peak_memory":
        return "bytes"
    if name.endswith("_s"):
        return "seconds"
    return "rate" if name == "throughput" else "count"


def format_value(name: str, value: float, compact: bool = False) -> str:
    """`value` of quantity `name` in its natural unit: 12.3 ms, 1.50MiB, 91.20%, 4.10M; `compact` for tables:
    12.3ms, 80.79K/s."""
    if not math.isfinite(value):
        return str(value)
    kind = _kind(name)
    if kind == "share":
        return f"{100 * value:.2f}%"
    if kind == "bytes":
        return human(value, "B")
    if kind == "seconds":
        factor, unit = _seconds(abs(value))
        return f"{value * factor:.3g}{'' if compact else ' '}{unit}"
    if kind == "rate":
        return f"{human(value)}/s" if compact else f"{value:.4g} samples/s"
    return human(value) if abs(value) >= 1000 or value == int(value) else f"{value:.4g}"


def _seconds(top: float) -> tuple[float, str]:
    for factor, unit in ((1.0, "s"), (1e3, "ms"), (1e6, "µs")):
        if top >= 1.0 / factor:
            return factor, unit
    return 1e9, "ns"


def unit_scale(name: str, values: Sequence[float], title: str | None = None) -> tuple[float, str]:
    """(factor, axis label) that shows `values` of quantity `name` in a readable unit; the label reads
    `title` (default `name`) and the unit: `macs/sample (K)`."""
    title = title or name
    top = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    kind = _kind(name)
    if kind == "share":
        return 100.0, f"{title} (%)"
    if kind == "seconds":
        factor, unit = _seconds(top)
        return factor, f"{title} ({unit})"
    if kind == "rate":
        return 1.0, f"{title} (samples/s)"
    base, prefixes = (1024.0, ("B", "KiB", "MiB", "GiB", "TiB")) if kind == "bytes" else (1000.0, ("", "K", "M", "G"))
    power = 0
    while top >= base and power < len(prefixes) - 1:
        top, power = top / base, power + 1
    unit = prefixes[power]
    return base**-power, f"{title} ({unit})" if unit else title
