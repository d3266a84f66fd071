"""cluster: running decomp on Ray (evaluators, search driver, parallel runtime) and the `decomp` CLI.

The only package that imports `ray`. The names below are loaded from their modules on first use, so
importing `cluster` (as every `decomp` command does) does not import Ray, torch or Optuna by itself.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "JobConfig": "cluster.config",
    "load_config": "cluster.config",
    "parse_config": "cluster.config",
    "run_search": "cluster.search_job",
    "SearchProgress": "cluster.driver",
    "SearchSummary": "cluster.driver",
    "Task": "cluster.task",
    "ModelTask": "cluster.task",
    "job_model": "cluster.task",
    "connect": "cluster.connect",
    "review_run": "cluster.review",
    "candidate_view": "cluster.candidate_view",
    "export_candidate": "cluster.export",
    "RayRunner": "cluster.runners",
    "LocalRunner": "cluster.runners",
    "measure": "cluster.runtime",
    "run_export": "cluster.runtime",
    "run_calibration": "cluster.calibrate",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value
