"""The benchmarks' session: at smoke size their sections go to a smoke file in pytest's temp folder, named at the
end of the run; BENCHMARKS.md is rewritten only at full size (`--benchmark-size full`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.benchmarks import record, size

SMOKE_FILE = pytest.StashKey[Path]()


@pytest.fixture(scope="session", autouse=True)
def smoke_figures(request, tmp_path_factory):
    """The file smoke-size sections are written to (None at full size)."""
    if size.is_full():
        yield None
        return
    path = request.config.stash[SMOKE_FILE] = tmp_path_factory.getbasetemp() / "BENCHMARKS.smoke.md"
    with record.smoke_file(path):
        yield path


@pytest.fixture(autouse=True)
def torch_threads():
    """Give back the torch thread count a benchmark found: several set 1 thread for themselves, and a later
    benchmark in the same session (prune speed, graph build) would otherwise time its models with 1."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_terminal_summary(terminalreporter, config):
    path = config.stash.get(SMOKE_FILE, None)
    if path is not None and path.exists():
        terminalreporter.write_line(f"benchmark figures at smoke size (BENCHMARKS.md untouched): {path}")
