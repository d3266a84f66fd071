"""Connect to Ray: an embedded local cluster by default, an existing one with `address` (or under
`ray job submit`, which sets RAY_ADDRESS). Ray's token authentication stays as Ray configures it."""

from __future__ import annotations

import logging
import os

import ray

__all__ = ["connect", "cluster_cpus", "cluster_gpus"]


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start or join a Ray cluster unless this process is already connected.

    `address=None` joins the cluster named by RAY_ADDRESS if set, else starts a local one with
    `num_cpus` CPUs (all of this machine's by default)."""
    if ray.is_initialized():
        return
    local = address is None and not os.environ.get("RAY_ADDRESS")
    ray.init(
        address=address,
        num_cpus=num_cpus if local else None,
        include_dashboard=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))
