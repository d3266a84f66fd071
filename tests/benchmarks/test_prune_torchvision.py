"""`decomp prune torchvision:NAME --ratio 0.5` on every torchvision classification model (issue 23).

Each model is pruned by the CLI exactly as a user runs it, in its own process, under a time and a memory
cap (the process is stopped past either; the row says which). The CLI runs the equivalence oracle on what
it writes, so exit 0 means the physically pruned model computes what the plan says. A row is:

- pruned: exit 0 and fewer MACs (groups the pruning left whole are counted, their reasons in the summary);
- nothing pruned: exit 0 and the same MACs (every group left whole, each with a reason);
- refused: exit 2 with decomp's one-line error (a named refusal);
- crashed: any other exit (a traceback: a bug), or over a cap.

Full size runs all of `torchvision.models.list_models(module=torchvision.models)` and asserts the goal
(>= 80 pruned, none crashed); smoke runs three small ones.
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
    seconds = time.perf_counter() - start
    row = {"name": name, "seconds": seconds, "peak_gib": peak, "before": None, "after": None, "whole": 0}
    if over is not None:
        return row | {"result": "crashed", "why": over}
    done = json.loads(report.read_text()) if report.exists() else {"rc": child.returncode}
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
    rows = [prune(name, tmp_path) for name in NAMES]
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
            "coupling groups not pruned, each with a reason in the summary. Seconds on a shared 2-core VM.",
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
