"""Search jobs on a real Ray: several evaluators complete a search; evaluators that die (killed, or their
process crashing) lose no trial; a driver killed by SIGKILL resumes to exactly the budget with no candidate
id twice; a `ray start --head` cluster on loopback serves `decomp search --address` and `ray job submit`.

Every Ray process a test starts is stopped by the test: the embedded Ray by `run_search` itself, the head
cluster by killing its whole process session (never `ray stop`, which would stop other users' Ray too)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml

import cluster.search_job as search_job
from cluster.config import parse_config
from cluster.runs import CHECKPOINT, LOG, open_study
from cluster.search_job import run_search
from search.records import Candidate, Evaluation
from search.space import BoxSpace
from search.study import trials_to_records
from tests.ray_cluster import ray_head

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
CLI = "import cluster.cli_search; from cluster.cli import main; main()"


def job(folder: Path, **changes) -> dict:
    data = {
        "name": "ray-test",
        "model": "python:tests.tiny_models:tiny_net",
        "objectives": ["macs", "latency_s", "comm_bytes"],
        "space": {"levels": [1.0, 0.5], "max_parts": 2},
        "searcher": {"name": "nsga2", "seed": 0, "settings": {"population": 4}},
        "budget": {"evaluations": 6},
        "evaluators": {"count": 2, "cpus": 1, "retries": 1},
        "run": {"folder": str(folder)},
    }
    data.update(changes)
    return data


def write_job(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(tmp_path / "run", **changes)))
    return path


def ids_of(folder: Path) -> list[int]:
    return [c.id for c, _ in trials_to_records(open_study(folder)[1])]


class SlowBox:
    """Two objectives over a box, `seconds` per evaluation; the first evaluation of candidate `crash` kills its
    own process (a marker file remembers, so the restarted actor evaluates it)."""

    def __init__(self, seconds: float = 0.0, crash: int | None = None, marker: str = "") -> None:
        self.seconds, self.crash, self.marker = seconds, crash, marker

    def space(self):
        return BoxSpace(3)

    def setup(self) -> None:
        pass

    levels = ("costs",)

    def evaluate(self, candidate: Candidate, level: int = 0) -> Evaluation:
        if candidate.id == self.crash and not Path(self.marker).exists():
            Path(self.marker).touch()
            os._exit(1)
        time.sleep(self.seconds)
        x = candidate.genome
        return Evaluation.of(candidate.id, [x[0], 1 + x[1] - x[0] ** 0.5, x[2]])


def drive_slow(config: str, address: str) -> None:
    """The driver the SIGKILL test runs in a subprocess."""
    run_search(config, address=address, task=SlowBox(0.4))


def test_a_search_with_several_evaluators_completes_on_an_embedded_ray(tmp_path):
    assert not ray.is_initialized()
    config = parse_config(
        job(
            tmp_path / "run",
            objectives=["agreement", "macs", "latency_s"],
            constraints=[{"name": "peak_memory", "max": "64 MiB"}],
            budget={"evaluations": 8},
            latency={"batch_size": 4, "micro_batches": 2},
            accuracy={"max_samples": 32},
        )
    )
    seen = []
    summary = run_search(config, progress=seen.append)
    records = trials_to_records(open_study(tmp_path / "run")[1])
    assert summary.trials == len(records) == 8 and summary.failed == 0
    assert sorted(c.id for c, _ in records) == list(range(8))
    assert all(0.0 <= e.values[0] <= 1.0 for _, e in records)  # agreement measured on the pruned model
    assert all(e.values[0] == 1.0 for c, e in records if not c.pruning.groups)  # unpruned: agrees with itself
    assert seen[-1].event == "end" and seen[-1].hypervolume == summary.hypervolume
    assert not ray.is_initialized()  # the embedded Ray it started is shut down


@pytest.fixture(scope="module")
def head():
    """A `ray start --head` cluster on 127.0.0.1 for this module's tests."""
    with ray_head() as info:
        yield info


@pytest.fixture
def token_auth(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # an explicit address never turns token auth on by itself


def test_dead_evaluators_lose_no_trial(head, tmp_path, monkeypatch, token_auth):
    pools = []

    class Watched(search_job.EvaluatorPool):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            pools.append(self)

    def kill_one(progress):
        if progress.event == "trial" and progress.trials == 3:
            ray.kill(pools[0].actors[0])  # dead for good: the pool must start another

    monkeypatch.setattr(search_job, "EvaluatorPool", Watched)
    config = parse_config(job(tmp_path / "run", budget={"evaluations": 12}))
    task = SlowBox(0.3, crash=8, marker=str(tmp_path / "crashed"))  # a crash: Ray restarts the actor
    summary = run_search(config, address=head["address"], progress=kill_one, task=task)
    ids = ids_of(tmp_path / "run")
    assert summary.trials == 12 and summary.failed == 0 and sorted(ids) == list(range(12))
    assert (tmp_path / "crashed").exists() and summary.replaced >= 1 and summary.resubmitted >= 2
    assert "its evaluator died" in (tmp_path / "run" / LOG).read_text()


def test_a_driver_killed_mid_search_resumes_to_exactly_the_budget(head, tmp_path, token_auth):
    config = write_job(tmp_path, budget={"evaluations": 14}, evaluators={"count": 2, "in_flight": 4})
    code = "import sys; from tests.integration.test_search_job_ray import drive_slow; drive_slow(*sys.argv[1:])"
    driver = subprocess.Popen(
        [sys.executable, "-c", code, str(config), head["address"]],
        cwd=REPO,
        env=head["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = tmp_path / "run" / LOG
    try:
        deadline = time.monotonic() + 120
        while not (log.exists() and log.read_text().count(" complete: ") >= 4):
            assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before it was killed"
            time.sleep(0.1)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = ids_of(tmp_path / "run")
    assert 4 <= len(before) < 14
    summary = run_search(tmp_path / "run", address=head["address"], resume=True, task=SlowBox(0.0))
    ids = ids_of(tmp_path / "run")
    assert summary.resumed and summary.trials == len(ids) == 14 and len(set(ids)) == 14
    assert "asked candidates to resubmit" in log.read_text()
    assert '"pending": []' in (tmp_path / "run" / CHECKPOINT).read_text()


def test_decomp_search_with_address_joins_the_cluster(head, tmp_path):
    config = write_job(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", CLI, "search", str(config), "--address", head["address"], "--workers", "2"],
        cwd=REPO,
        env=head["env"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "6 (6 complete, 0 failed)" in proc.stdout and len(ids_of(tmp_path / "run")) == 6


def test_ray_job_submit_runs_the_search_on_the_cluster(head, tmp_path):
    config = write_job(tmp_path, name="submitted", model="python:decomp.zoo:lenet5")
    # the entrypoint runs wherever the job supervisor runs it: the model comes from the installed package
    submit = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", head["dashboard"], "--"]
    for _ in range(12):  # the head's dashboard agent can take a while to accept jobs after `ray start`
        proc = subprocess.run(
            [*submit, sys.executable, "-c", CLI, "search", str(config)],
            cwd=REPO,
            env={k: v for k, v in head["env"].items() if k != "RAY_ADDRESS"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if "No available agent to submit job" not in proc.stderr:
            break
        time.sleep(5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout + proc.stderr and len(ids_of(tmp_path / "run")) == 6
