"""Calibration files: a `Calibration` fitted on runs of real candidates on one device key and runtime,
stored beside the op tables so later searches on machines of the same kind reuse it; and the fit of the
runtime terms (what the runtime adds around each call of a part).

A file (format `decomp.calibration/1`) holds the device key, the runtime it was measured under
(`local`: parts called in-process; `ray`: one actor per part), the fitted terms and the runs it was
fitted on (for review).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from decomp.errors import GraphError
from decomp.files import write_atomically
from decomp.latency.predict import Calibration
from decomp.latency.table import default_table_path

__all__ = ["FORMAT", "RUNTIMES", "default_calibration_path", "fit_runtime", "load_calibration", "save_calibration"]

FORMAT = "decomp.calibration/1"
RUNTIMES = ("local", "ray")


def default_calibration_path(key: str, runtime: str) -> Path:
    """$DECOMP_CACHE (or ~/.cache/decomp)/calibrations/<device key>.<runtime>.json."""
    _check_runtime(runtime)
    table = default_table_path(key)
    return table.parent.parent / "calibrations" / f"{table.stem}.{runtime}.json"


def save_calibration(
    path: str | Path, key: str, runtime: str, calibration: Calibration, runs: Sequence[dict[str, Any]] = ()
) -> Path:
    """Write the calibration atomically (a temporary file renamed into place)."""
    _check_runtime(runtime)
    data = {
        "format": FORMAT,
        "device": key,
        "runtime": runtime,
        "calibration": calibration.to_json(),
        "runs": list(runs),
    }
    return write_atomically(path, json.dumps(data, indent=1))


def load_calibration(path: str | Path, key: str | None = None, runtime: str | None = None) -> Calibration:
    """The calibration in `path`; refuses a file of another device key or runtime than the ones given."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GraphError(f"no calibration file at {path}; make one with `decomp calibrate`") from None
    except json.JSONDecodeError as err:
        raise GraphError(f"calibration file {path} is not valid JSON ({err}); re-run `decomp calibrate`") from None
    if data.get("format") != FORMAT:
        raise GraphError(f"{path} is not a calibration of format {FORMAT} (format is {data.get('format')!r})")
    if key is not None and data.get("device") != key:
        raise GraphError(
            f"calibration {path} was measured on {data.get('device')!r}, not on {key!r}; calibrate this device"
        )
    if runtime is not None and data.get("runtime") != runtime:
        raise GraphError(f"calibration {path} is for runtime {data.get('runtime')!r}, not {runtime!r}")
    return Calibration.from_json(data["calibration"])


def fit_runtime(gaps: Sequence[float], in_bytes: Sequence[float]) -> tuple[float, float]:
    """Fit `gap ~ per_call + per_in_byte x in_bytes` over runs, both terms >= 0, least squares.

    `gaps`: per run, the wall time per micro-batch beyond the slowest stage's busy time per call (what
    the runtime adds around the bottleneck stage's calls); `in_bytes`: the bytes that stage receives per
    call. With fewer than 2 distinct byte counts only `per_call` (the median gap) is fitted."""
    y = np.maximum(np.asarray(gaps, dtype=np.float64), 0.0)
    b = np.asarray(in_bytes, dtype=np.float64)
    if len(y) == 0 or len(y) != len(b):
        raise GraphError(f"runtime fit needs one byte count per gap, at least one run; got {len(y)} and {len(b)}")
    if len(set(b.tolist())) < 2:
        return float(np.median(y)), 0.0
    x = np.stack([np.ones_like(b), b], axis=1)
    (per_call, per_byte), *_ = np.linalg.lstsq(x, y, rcond=None)
    if per_byte < 0:
        return float(np.median(y)), 0.0
    if per_call < 0:
        return 0.0, float(np.dot(b, y) / np.dot(b, b))
    return float(per_call), float(per_byte)


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise GraphError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
