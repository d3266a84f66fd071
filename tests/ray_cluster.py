"""Ray clusters started the way a user starts one (`ray start --head`, and nodes joining it), for integration
tests. Every process is stopped by killing its whole process session (never `ray stop`, which would stop other
users' Ray too)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def ray_head(resources: dict[str, float] | None = None):
    """Start `ray start --head` on 127.0.0.1 (free ports, its own temp dir, token auth on, a dashboard for job
    submission, custom `resources`); on exit kill its whole process session and remove the temp dir."""
    temp = tempfile.mkdtemp(prefix="rayhead", dir="/tmp")
    port, dashboard = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PYTHONPATH": str(REPO)}
    command = [
        *(sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--disable-usage-stats"),
        *("--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2", "--temp-dir", temp),
        *("--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)),
        *(("--resources", json.dumps(resources)) if resources else ()),
    ]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_for_port(dashboard, proc)
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        _stop_session(proc)
        shutil.rmtree(temp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the Ray head's dashboard did not open port {port} in {timeout:.0f} s")


def _stop_session(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, every process of the session `proc` leads (Ray's workers included)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (5 if sig == signal.SIGTERM else 15)
        while _session(proc.pid) and time.monotonic() < deadline:
            proc.poll()
            time.sleep(0.3)
    proc.wait(timeout=5)


def _session(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout.split("\n")
    rows = [line.split() for line in out if line.strip()]
    return [int(pid) for pid, s, stat in rows if int(s) == sid and not stat.startswith("Z")]


@contextlib.contextmanager
def ray_node(address: str, env: dict[str, str], resources: dict[str, float], cpus: int = 1):
    """A second node joining the cluster at `address` (`ray start --address`) with custom `resources`; waits
    until the cluster lists it, stops it on exit."""
    import ray

    temp = tempfile.mkdtemp(prefix="raynode", dir="/tmp")
    command = [
        *(sys.executable, "-m", "ray.scripts.scripts", "start", "--address", address, "--block"),
        *("--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--resources", json.dumps(resources)),
        "--disable-usage-stats",
    ]
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not all(ray.cluster_resources().get(k, 0) >= v for k, v in resources.items()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node with {resources} did not join the cluster")
            time.sleep(0.5)
        yield proc
    finally:
        _stop_session(proc)
        shutil.rmtree(temp, ignore_errors=True)
