"""`decomp split` and `decomp run --local`: baseline splits of dense and pruned models, exported,
verified and run; bad plans and tampered folders give clear errors."""

import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from cluster.cli import app
from cluster.runners import LocalRunner, export_loaders
from cluster.runtime import export_inputs, measure, priced_batch, priced_replicas, run_export
from decomp import DecompError, ExportError, InputShapeError, InvalidPlanError, build_graph, load_model
from decomp.partition import PartitionPlan, load_export, manifest_layout, optimal_pipeline, read_manifest
from decomp.partition.job import SplitRequest, run_split
from decomp.pruning import PruningPlan
from decomp.pruning.job import PruneRequest, load_pruned, run_prune

TINY = "python:tests.tiny_models:tiny_net"


def _reference(model, inputs):
    with torch.no_grad():
        return model(*inputs)


@pytest.mark.parametrize(("mode", "parts"), [("pipeline", 2), ("pipeline", 3), ("dag", 2)])
def test_split_exports_parts_that_reproduce_the_model(tmp_path, mode, parts):
    summary = run_split(SplitRequest(TINY, parts, mode), tmp_path / "out")
    loaded = load_model(TINY)
    assert summary.max_abs_diff <= 1e-5
    assert len(summary.metrics.parts) == parts and summary.plan.mode == mode
    export = load_export(tmp_path / "out")
    x = torch.randn(3, *loaded.example_inputs[0].shape[1:])  # another batch size: the export is dynamic
    (got,) = export(x)
    torch.testing.assert_close(got, _reference(loaded.module, (x,)), rtol=0, atol=1e-5)
    manifest = read_manifest(tmp_path / "out")
    assert manifest.source == TINY and manifest.partition_plan == summary.plan
    assert manifest.expected_costs["metrics"]["macs"] == summary.metrics.macs


def test_pipeline_split_is_the_dp_optimum(tmp_path):
    summary = run_split(SplitRequest(TINY, 2, "pipeline"), tmp_path / "out")
    loaded = load_model(TINY)
    graph = build_graph(loaded.module, loaded.example_inputs, loaded.tracer)
    assert summary.plan.to_json() == optimal_pipeline(graph, 2).to_json()


def test_split_of_a_pruned_folder_records_the_pruning_plan(tmp_path):
    run_prune(PruneRequest(TINY, "l1", ratio=0.5), tmp_path / "pruned")
    summary = run_split(SplitRequest("", 2, "pipeline", pruned=str(tmp_path / "pruned")), tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert manifest.pruning_plan == PruningPlan.loads((tmp_path / "pruned" / "plan.json").read_text())
    pruned = load_pruned(tmp_path / "pruned")
    x = torch.randn(2, *load_model(TINY).example_inputs[0].shape[1:])
    (got,) = load_export(tmp_path / "out")(x)
    torch.testing.assert_close(got, _reference(pruned, (x,)), rtol=0, atol=1e-5)
    dense = load_model(TINY)
    assert summary.metrics.macs < build_graph(dense.module, dense.example_inputs).totals.macs
    with pytest.raises(DecompError, match="holds a pruned .*tiny_net, not torchvision:resnet18"):
        run_split(SplitRequest("torchvision:resnet18", 2, pruned=str(tmp_path / "pruned")), tmp_path / "other")


def test_split_with_a_plan_file_and_plans_that_do_not_fit(tmp_path):
    loaded = load_model(TINY)
    graph = build_graph(loaded.module, loaded.example_inputs, loaded.tracer)
    plan = PartitionPlan.pipeline(graph, [2])
    (tmp_path / "plan.json").write_text(plan.dumps())
    summary = run_split(SplitRequest(TINY, plan=str(tmp_path / "plan.json")), tmp_path / "out")
    assert summary.plan.to_json() == plan.to_json()
    wrong = PartitionPlan.from_assignment({"no_such_op": 0, **dict(plan.assignment)}, "pipeline")
    (tmp_path / "wrong.json").write_text(wrong.dumps())
    with pytest.raises(InvalidPlanError, match="no_such_op"):
        run_split(SplitRequest(TINY, plan=str(tmp_path / "wrong.json")), tmp_path / "out2")
    with pytest.raises(InvalidPlanError, match="is a pipeline plan, but --mode dag"):
        run_split(SplitRequest(TINY, mode="dag", plan=str(tmp_path / "plan.json")), tmp_path / "out3")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()  # nothing half-written
    with pytest.raises(InvalidPlanError, match="unknown mode 'ring'; choose one of"):
        SplitRequest(TINY, mode="ring")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        run_split(SplitRequest(TINY), tmp_path / "out")


def test_run_local_reports_and_checks_batch_sizes(tmp_path):
    run_split(SplitRequest(TINY, 2), tmp_path / "out")
    report = run_export(tmp_path / "out", batch_size=4, micro_batches=2, batches=3, local=True)
    assert report.parts == 2 and report.batch_size == 4 and report.micro_batches == 2 and report.batches == 3
    assert report.throughput == pytest.approx(12 / report.seconds)
    assert all(b > 0 for b in report.busy_s)
    manifest = read_manifest(tmp_path / "out")
    assert [tuple(t.shape) for t in export_inputs(manifest, 5)] == [(5, *manifest.inputs[0].shape[1:])]
    # as an export whose graph fixes the batch size records it
    manifest = replace(manifest, inputs=(replace(manifest.inputs[0], batch_dim=None),))
    with pytest.raises(InputShapeError, match="with batch size 1 only"):
        export_inputs(manifest, 5)
    # ... and takes a batch cut into micro-batches of that size
    assert [tuple(t.shape) for t in export_inputs(manifest, 3, micro_batches=3)] == [(3, *manifest.inputs[0].shape[1:])]
    priced = replace(manifest, expected_costs={"runtime": {"batch_size": 8, "micro_batches": 4, "replicas": 2}})
    assert priced_batch(priced) == (8, 4) and priced_batch(manifest) == (None, 1)
    assert priced_replicas(priced) == 2 and priced_replicas(manifest) == 1


def test_measure_streams_until_min_seconds_and_returns_the_last_batch(tmp_path):
    run_split(SplitRequest(TINY, 2), tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    layout, loaders = manifest_layout(manifest), export_loaders(tmp_path / "out")
    inputs = export_inputs(manifest, 4)
    runner = LocalRunner(layout, loaders)
    report, outputs = measure(runner, inputs, batches=1, micro_batches=2, min_seconds=0.3)
    assert report.seconds >= 0.3 and report.batches > 1  # one batch of a tiny model takes far less than 0.3 s
    assert report.throughput == pytest.approx(report.batches * 4 / report.seconds)
    assert torch.allclose(outputs[0], load_export(tmp_path / "out")(*inputs)[0], atol=1e-5)


def test_cli_split_then_run(tmp_path):
    runner = CliRunner()
    out, js = tmp_path / "out", tmp_path / "split.json"
    result = runner.invoke(app, ["split", TINY, "--parts", "2", "--mode", "dag", "--out", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps lines at the terminal width
    assert "verified: max abs diff 0" in text and "2 parts (dag)" in text
    assert json.loads(js.read_text())["max_abs_diff"] <= 1e-5
    run_json = tmp_path / "run.json"
    args = ["run", str(out), "--local", "--batch-size", "4", "--batches", "2", "--json", str(run_json)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "throughput" in text and "part 1 busy" in text
    assert json.loads(run_json.read_text())["batches"] == 2


def test_run_refuses_a_tampered_export(tmp_path):
    run_split(SplitRequest(TINY, 2), tmp_path / "out")
    part = next(p for p in (tmp_path / "out").iterdir() if p.suffix == ".pt2")
    part.write_bytes(part.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ExportError, match="has changed since export"):
        run_export(tmp_path / "out", local=True)


def test_split_balanced_by_profiled_op_times(tmp_path):
    summary = run_split(SplitRequest(TINY, 2, "pipeline", balance="time"), tmp_path / "out")
    assert summary.max_abs_diff <= 1e-5 and summary.tuning_runs is None
    costs = read_manifest(tmp_path / "out").expected_costs
    assert costs["stage_cost_model"]["measured"] is True and costs["stage_seconds"] == list(summary.stage_seconds)
    assert len(summary.stage_seconds) == 2 and all(s > 0 for s in summary.stage_seconds)


def test_split_balanced_by_running_candidates(tmp_path):
    ran = []

    def run_stages(split):  # a fake runtime: every op of the first part runs 3x slower side by side
        ran.append(split.plan)
        ops = [sum(n.op == "call_module" or n.op == "call_function" for n in m.graph.nodes) for m in split.modules]
        return [3e-3 * ops[0], 1e-3 * ops[1]]

    request = SplitRequest(TINY, 2, "pipeline", balance="run", tune_steps=3)
    summary = run_split(request, tmp_path / "out", run_stages=run_stages)
    runs = summary.tuning_runs
    assert 1 <= len(runs) == len(ran) <= 3 and len(set(ran)) == len(ran)
    loaded = load_model(TINY)
    graph = build_graph(loaded.module, loaded.example_inputs, loaded.tracer)
    assert [list(r.cuts) for r in runs] == [p.cuts(graph) for p in ran]  # in the order they ran
    (kept,) = [r for r in runs if r.kept]
    assert max(kept.stage_seconds) / sum(kept.stage_seconds) == min(
        max(r.stage_seconds) / sum(r.stage_seconds) for r in runs
    )
    assert summary.plan.cuts(graph) == list(kept.cuts) and summary.max_abs_diff <= 1e-5
    assert read_manifest(tmp_path / "out").expected_costs["tuning_runs"] == [r.to_json() for r in runs]
    assert json.loads(json.dumps(summary.to_json()))["tuning_runs"] == [r.to_json() for r in runs]


def test_split_balance_options_that_do_not_fit():
    with pytest.raises(InvalidPlanError, match="unknown balance 'flops'; choose one of macs, time, run"):
        SplitRequest(TINY, balance="flops")
    with pytest.raises(InvalidPlanError, match="--balance time chooses pipeline cut points; it needs --mode pipeline"):
        SplitRequest(TINY, mode="dag", balance="time")
    with pytest.raises(DecompError, match="balance 'run' runs candidate splits: pass run_stages"):
        run_split(SplitRequest(TINY, balance="run"), "unused")
