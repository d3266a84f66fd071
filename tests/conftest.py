"""Fixtures shared by the test suites."""

from __future__ import annotations

import pytest
import ray

from cluster.connect import connect


@pytest.fixture(scope="module")
def local_ray(request):
    """A local Ray cluster for one test module, shut down after it: the module's `RAY_CPUS` logical CPUs
    (default 2, this machine's cores)."""
    connect(num_cpus=getattr(request.module, "RAY_CPUS", 2))
    yield
    ray.shutdown()
