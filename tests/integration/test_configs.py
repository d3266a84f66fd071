"""Every job file in `configs/` works end to end, shrunk to a small budget on CPU: `decomp search`, then
`decomp export` of every front candidate and `decomp run --local` of each export; where the job measures
accuracy on data, `decomp eval` of each export gives the front's test accuracy within 0.3 points.

A job file is shrunk, not rewritten: its objectives, constraints, space, searcher, latency and accuracy
settings stay; the budget shrinks, evaluators take no GPU, a cluster of GPUs becomes the CPU preset with as
many devices, and a model too big for a CPU test gets a smaller variant of itself (`SMALLER`)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cluster.cli import app
from cluster.review import review_run
from decomp.latency import load_cluster
from decomp.latency.cluster import PRESETS

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY_CPUS = 2
CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
EVALUATIONS = {"gpt2-pipeline-4gpu": 3, "resnet18-4gpu": 5}  # every front candidate is exported: keep fronts short
DEFAULT_EVALUATIONS = 8
# the same architecture, smaller: GPT-2 with 2 narrow layers (still heads and MLP channels, still traced by
# torch.export at a fixed batch), resnet18 at 32x32 (still 4 stages of residual blocks)
SMALLER = {
    "hf:gpt2": {"model": "hf:gpt2?n_layer=2&n_embd=64&n_head=4"},
    "torchvision:resnet18": {"input_shape": [1, 3, 32, 32]},
}
MAX_SAMPLES = 256  # accuracy / agreement measured on at most this many samples
TOLERANCE = 0.003  # exported test accuracy vs the front's, in [0, 1]


def shrink(data: dict, folder: Path) -> dict:
    """The job `data` at a CPU test's size (see the module docstring)."""
    data = dict(data) | SMALLER.get(data["model"], {})
    data["budget"] = {"evaluations": EVALUATIONS.get(data["name"], DEFAULT_EVALUATIONS)}
    data["evaluators"] = dict(data.get("evaluators", {})) | {"count": 1, "cpus": 1, "gpus": 0, "threads": 1}
    cluster = load_cluster(data.get("cluster", "cpu-host-x2"))
    if any(kind.type == "gpu" for kind in cluster.kinds):
        data["cluster"] = f"cpu-host-x{len(cluster.devices)}"
        assert data["cluster"] in PRESETS, f"no CPU preset with {len(cluster.devices)} devices for {data['name']}"
    accuracy = dict(data.get("accuracy", {}))
    accuracy["max_samples"] = min(accuracy.get("max_samples") or MAX_SAMPLES, MAX_SAMPLES)
    data["accuracy"] = accuracy
    data["run"] = {"folder": str(folder)}
    return data


def measures_accuracy(data: dict) -> bool:
    """Whether the job measures accuracy on labelled data (and so reports a test accuracy for its front)."""
    names = [o if isinstance(o, str) else o["name"] for o in data["objectives"]]
    names += [c["name"] for c in data.get("constraints", [])]
    return bool(data.get("data")) and "accuracy" in names


def pruned_beside(run: Path, front: list[dict]) -> list[dict]:
    """The first complete pruned candidate, as a front row, where the front has none (a job whose constraint only
    the unpruned model meets, e.g. agreement on random weights): its export is checked too."""
    review = review_run(run)
    on_front = {row["candidate_id"] for row in front}
    if any(r.candidate.pruning and r.candidate.pruning.groups for r in review.rows if r.candidate.id in on_front):
        return []
    pruned = [r for r in review.rows if r.evaluation.ok and r.candidate.pruning and r.candidate.pruning.groups]
    assert pruned, f"{run}: no complete pruned candidate to export"
    row = pruned[0]
    parts = row.candidate.partition.parts if row.candidate.partition is not None else 1
    return [{"candidate_id": row.candidate.id, "parts": parts, "metrics": dict(row.evaluation.metrics)}]


def invoke(*args) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def test_there_are_job_files():
    assert {p.stem for p in CONFIGS} >= {"quickstart", "resnet18-4gpu", "gpt2-pipeline-4gpu"}


@pytest.mark.usefixtures("local_ray")
@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_job_file_searches_exports_and_runs(path: Path, tmp_path: Path):
    start = time.perf_counter()
    data = shrink(yaml.safe_load(path.read_text()), tmp_path / "run")
    job = tmp_path / path.name
    job.write_text(yaml.safe_dump(data))
    invoke("search", job, "--json", tmp_path / "search.json")
    summary = json.loads((tmp_path / "search.json").read_text())
    assert summary["complete"] == data["budget"]["evaluations"] and summary["failed"] == 0
    invoke("pareto", tmp_path / "run", "--json", tmp_path / "front.json")
    front = json.loads((tmp_path / "front.json").read_text())["front"]
    assert front, f"{path.name}: no feasible candidate in {data['budget']['evaluations']} trials"
    for row in front + pruned_beside(tmp_path / "run", front):
        out = tmp_path / f"export_{row['candidate_id']}"
        invoke(
            "export",
            tmp_path / "run",
            "--candidate",
            row["candidate_id"],
            "--out",
            out,
            "--json",
            out.with_suffix(".json"),
        )
        exported = json.loads(out.with_suffix(".json").read_text())
        assert exported["parts"] == row["parts"] and exported["max_abs_diff"] <= 1e-5
        assert "throughput" in invoke("run", out, "--local", "--batches", 1)
        if measures_accuracy(data):  # scored on the samples the search scored it on (the export says which)
            score = out.with_suffix(".eval.json")
            invoke("eval", out, "--local", "--json", score)
            measured = json.loads(score.read_text())
            assert measured["data"] == data["data"] and measured["samples"] == MAX_SAMPLES
            assert measured["recorded"] == pytest.approx(row["metrics"]["test_accuracy"])
            assert abs(measured["difference"]) <= TOLERANCE, (path.name, row["candidate_id"], measured)
    print(f"{path.stem}: {len(front)} front candidates, {time.perf_counter() - start:.0f} s")
