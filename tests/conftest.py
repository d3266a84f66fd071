"""Fixtures and options shared by the test suites."""

from __future__ import annotations

import os

# Ray reads its auth mode when it is imported: token auth (on by default for the local clusters tests start)
# also for the `ray start` clusters some tests join by address
os.environ.setdefault("RAY_AUTH_MODE", "token")

import pytest  # noqa: E402
import ray  # noqa: E402

from cluster.connect import connect  # noqa: E402
from tests.benchmarks import size  # noqa: E402

_SIZE_BEFORE = pytest.StashKey[str | None]()


@pytest.fixture(scope="module")
def local_ray(request):
    """A local Ray cluster for one test module, shut down after it: the module's `RAY_CPUS` logical CPUs
    (default 2, this machine's cores)."""
    connect(num_cpus=getattr(request.module, "RAY_CPUS", 2))
    yield
    ray.shutdown()


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark-size",
        choices=size.SIZES,
        default=size.DEFAULT,
        help="benchmarks (-m benchmark) at smoke size (default: each mechanism end to end, figures written to a "
        "smoke file) or full size (the figures in BENCHMARKS.md, rewritten; targets asserted)",
    )


def pytest_configure(config):
    """Set the size before test modules are imported: benchmarks pick their sizes at import time (see
    tests/benchmarks/size.py); processes they start inherit it."""
    config.stash[_SIZE_BEFORE] = os.environ.get(size.ENV)
    os.environ[size.ENV] = config.getoption("benchmark_size")


def pytest_unconfigure(config):
    before = config.stash.get(_SIZE_BEFORE, None)
    if before is None:
        os.environ.pop(size.ENV, None)
    else:
        os.environ[size.ENV] = before


def pytest_report_header(config):
    return f"benchmark size: {config.getoption('benchmark_size')} (--benchmark-size)"
