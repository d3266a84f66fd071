"""`decomp prune torchvision:NAME --ratio 0.5` on every torchvision classification model (issue 23).

Each model is pruned by the CLI exactly as a user runs it, in its own process, under a time and a memory
cap (the process is stopped past either; the row says which). The CLI runs the equivalence oracle on what
it writes, so exit 0 means the physically pruned model computes what the plan says. A row is:

- pruned: exit 0 and fewer MACs (groups the pruning left whole are counted, their reasons in the summary);
- nothing pruned: exit 0 and the same MACs (every group left whole, each with a reason);
- refused: exit 2 with decomp's one-line error (a named refusal);
- crashed: any other exit (a traceback: a bug), or over a cap.

Full size runs all of `torchvision.models.list_models(module=torchvision.models)` and asserts the goal
(>= 80 pruned, none crashed); smoke runs three small ones. A full sweep takes hours on 2 cores:
DECOMP_BENCH_REUSE=FOLDER keeps each model's report in FOLDER and resumes from them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torchvision.models as tvm

from tests.benchmarks import size
from tests.benchmarks.record import record

pytestmark = pytest.mark.benchmark

ALL = tvm.list_models(module=tvm)
NAMES = size.pick(full=ALL, smoke=["squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x0_5"])
CAP_S = size.pick(full=600.0, smoke=300.0)
CAP_GIB = 16.0
GOAL = 80  # models pruned (of 80)

# the child: the CLI as a user runs it, then its own peak memory, wherever it ended
CHILD = """
import json, resource, sys, time
from cluster.cli import main
report, args = sys.argv[1], sys.argv[2:]
sys.argv = ["decomp", *args]
code, start = 0, time.perf_counter()
try:
    main()
except SystemExit as exit:
    code = exit.code if isinstance(exit.code, int) else 1
finally:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    with open(report, "w") as f:
        json.dump({"rc": code, "seconds": time.perf_counter() - start, "peak_gib": peak}, f)
"""


def _rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def prune(name: str, folder: Path) -> dict:
    """Run the CLI on `name` in a child process under the caps; what happened, as a row's fields."""
    out, report = folder / name, folder / f"{name}.json"
    command = [sys.executable, "-c", CHILD, str(report), "prune", f"torchvision:{name}", "--ratio", "0.5"]
    env = {**os.environ, "COLUMNS": "200"}
    start, over = time.perf_counter(), None
    with subprocess.Popen(
        [*command, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as child:
        peak = 0.0
        while child.poll() is None:
            peak = max(peak, _rss_gib(child.pid))
            if time.perf_counter() - start > CAP_S:
                over = f"over the {CAP_S:g} s cap"
            elif peak > CAP_GIB:
                over = f"over the {CAP_GIB:g} GiB cap"
            if over:
                child.kill()
                child.wait()
                break
            time.sleep(0.2)
        text = child.stdout.read()
    (folder / f"{name}.log").write_text(text)
    return _row(name, folder, time.perf_counter() - start, peak, over, text, child.returncode)


def reused(name: str, folder: Path) -> dict | None:
    """The row of an earlier run's finished report for `name` in `folder`, or None (a run stopped at a
    cap leaves no report, so it runs again)."""
    report = folder / f"{name}.json"
    if not report.exists():
        return None
    done, log = json.loads(report.read_text()), folder / f"{name}.log"
    text = log.read_text() if log.exists() else ""
    return _row(name, folder, done["seconds"], done["peak_gib"], None, text, done["rc"]) | {"reused": True}


def _row(name: str, folder: Path, seconds: float, peak: float, over: str | None, text: str, rc: int) -> dict:
    out, report = folder / name, folder / f"{name}.json"
    row = {"name": name, "seconds": seconds, "peak_gib": peak, "before": None, "after": None, "whole": 0}
    if over is not None:
        return row | {"result": "crashed", "why": over}
    done = json.loads(report.read_text()) if report.exists() else {"rc": rc}
    row["peak_gib"] = max(peak, done.get("peak_gib", 0.0))
    if done["rc"] == 0:
        summary = json.loads((out / "summary.json").read_text())
        before, after = summary["before"]["macs"], summary["after"]["macs"]
        pruned = after < before
        row |= {"before": before, "after": after, "whole": len(summary.get("skipped", {}))}
        return row | {"result": "pruned" if pruned else "nothing pruned", "why": ""}
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    if done["rc"] == 2 and errors:
        return row | {"result": "refused", "why": errors[-1].removeprefix("error: ")}
    tail = [line for line in text.splitlines() if line.strip()][-1:] or [f"exit {done['rc']}"]
    return row | {"result": "crashed", "why": tail[0]}


def _macs(value: int | None) -> str:
    return "" if value is None else f"{value / 1e9:.2f}G" if value >= 1e8 else f"{value / 1e6:.0f}M"


def test_every_torchvision_classifier_is_pruned_or_refused_clearly(tmp_path):
    # DECOMP_BENCH_REUSE=FOLDER resumes a sweep: models with a finished report there are not run again
    folder = Path(os.environ.get("DECOMP_BENCH_REUSE") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [reused(name, folder) or prune(name, folder) for name in NAMES]
    again = sum(bool(row.get("reused")) for row in rows)
    counts = {r: sum(row["result"] == r for row in rows) for r in ("pruned", "nothing pruned", "refused", "crashed")}
    table = [
        f"| {row['name']} | {row['result']} | {_macs(row['before'])} -> {_macs(row['after'])} | {row['whole']} | "
        f"{row['seconds']:.0f} | {row['peak_gib']:.1f} | {row['why'][:110].replace('|', '/')} |"
        for row in rows
    ]
    record(
        "prune-torchvision",
        [
            f"## `decomp prune torchvision:NAME --ratio 0.5` on {len(NAMES)} torchvision classifiers",
            "",
            "Each in its own process as a user runs it (the equivalence oracle checks what it writes), capped at "
            f"{CAP_S:g} s and {CAP_GIB:g} GiB; one example image at the crop size each model's weights name (224 for "
            "most, up to 600 for efficientnet_b7). 'left whole': "
            "coupling groups not pruned, each with a reason in the summary. Seconds on a shared 2-core VM."
            + (
                f" {again} rows are from an earlier run resumed in the same folder (DECOMP_BENCH_REUSE)."
                if again
                else ""
            ),
            "",
            f"**{counts['pruned']} pruned**, {counts['nothing pruned']} with nothing pruned, {counts['refused']} "
            f"refused with a named reason, {counts['crashed']} crashed or over a cap (goal: >= {GOAL} pruned "
            f"of {len(ALL)}).",
            "",
            "| model | result | MACs before -> after | left whole | s | peak GiB | why |",
            "|---|---|---|---|---|---|---|",
            *table,
        ],
    )
    crashed = [(row["name"], row["why"]) for row in rows if row["result"] == "crashed"]
    assert not crashed, crashed
    if size.is_full():
        assert counts["pruned"] >= GOAL, counts
