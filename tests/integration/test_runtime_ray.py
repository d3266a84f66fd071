"""The parallel runtime: parts on Ray actors give the same outputs as in-process, in order, and survive
a worker that dies; errors inside a part reach the caller by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from cluster.runners import LocalRunner, RayRunner, RuntimeFailure, loaders_for
from cluster.runtime import measure, split_batch
from decomp.errors import DecompError, InputShapeError
from decomp.partition import PartsLayout, PartSpec, run_local

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]


class Twice(nn.Module):
    def forward(self, h):
        return h, 2 * h


class DiesOnce(nn.Module):
    """Kills its worker process on the `at`-th call, once (a marker file remembers), or every time."""

    def __init__(self, marker: str, at: int, always: bool = False) -> None:
        super().__init__()
        self.marker, self.at, self.always, self.calls = marker, at, always, 0

    def forward(self, h):
        self.calls += 1
        if self.calls == self.at and (self.always or not Path(self.marker).exists()):
            Path(self.marker).touch()
            os._exit(1)
        return h + 1


class Checked(nn.Module):
    def forward(self, h):
        if h.shape[-1] != 4:
            raise InputShapeError(f"part p2 expects input h1 with last dim 4, got {tuple(h.shape)}")
        return h.sum(-1)


def _layout_and_modules(middle: nn.Module | None = None):
    torch.manual_seed(0)
    first = nn.Sequential(nn.Linear(6, 4), nn.ReLU())
    layout = PartsLayout(
        ["x"],
        ["y", "h2"],
        [PartSpec("p0", ["x"], ["h"]), PartSpec("p1", ["h"], ["h1", "h2"]), PartSpec("p2", ["h1"], ["y"])],
    )
    if middle is not None:
        layout = PartsLayout(
            ["x"], ["y"], [PartSpec("p0", ["x"], ["h"]), PartSpec("p1", ["h"], ["h1"]), PartSpec("p2", ["h1"], ["y"])]
        )
    return layout, [first, middle or Twice(), Checked()]


def test_ray_runner_matches_in_process_outputs_in_order():
    layout, modules = _layout_and_modules()
    batches = [[torch.randn(3, 6)] for _ in range(12)]  # distinct micro-batches: order is checked
    with RayRunner(layout, loaders_for(modules), max_in_flight=3) as runner:
        got = list(runner.map(batches))
        stats = runner.stats()
    assert len(got) == 12
    for out, (x,) in zip(got, batches, strict=True):
        expected = run_local(layout, modules, x)
        for a, b in zip(out, expected, strict=True):
            torch.testing.assert_close(a, b)
    assert [s["calls"] for s in stats] == [12, 12, 12]
    assert len({s["pid"] for s in stats}) == 3 and all(s["threads"] == 1 for s in stats)  # one process per part


def test_measure_reports_throughput_and_busy_time_per_part():
    layout, modules = _layout_and_modules()
    x = torch.randn(16, 6)
    with RayRunner(layout, loaders_for(modules)) as runner:
        report, outputs = measure(runner, [x], batches=4, micro_batches=4)
    local_report, local_outputs = measure(LocalRunner(layout, loaders_for(modules)), [x], batches=4, micro_batches=4)
    for a, b in zip(outputs, local_outputs, strict=True):
        torch.testing.assert_close(a, b)
    assert report.parts == 3 and report.batch_size == 16 and report.micro_batches == 4
    assert report.throughput == pytest.approx(4 * 16 / report.seconds)
    assert all(b > 0 for b in report.busy_s) and all(0 < s < 1 for s in report.busy_share)
    assert report.latency_median_s <= report.latency_max_s <= report.seconds
    assert local_report.runner == "LocalRunner" and report.runner == "RayRunner"


def test_a_worker_that_dies_is_restarted_and_its_calls_retried(tmp_path):
    layout, modules = _layout_and_modules(DiesOnce(str(tmp_path / "died"), at=3))
    batches = [[torch.randn(2, 6)] for _ in range(6)]
    with RayRunner(layout, loaders_for(modules)) as runner:
        got = list(runner.map(batches))
    assert (tmp_path / "died").exists()  # it did die
    for (y,), (x,) in zip(got, batches, strict=True):
        torch.testing.assert_close(y, (modules[0](x) + 1).sum(-1))


def test_a_worker_that_keeps_dying_is_reported(tmp_path):
    layout, modules = _layout_and_modules(DiesOnce(str(tmp_path / "died"), at=1, always=True))
    runner = RayRunner(layout, loaders_for(modules), max_restarts=1)
    with pytest.raises(RuntimeFailure, match="worker died"):
        list(runner.map([[torch.randn(2, 6)] for _ in range(3)]))
    runner.close()


def test_an_error_inside_a_part_reaches_the_caller_by_name():
    layout, modules = _layout_and_modules(nn.Linear(4, 5))  # p2 gets width 5, expects 4
    with RayRunner(layout, loaders_for(modules)) as runner, pytest.raises(InputShapeError, match="part p2"):
        list(runner.map([[torch.randn(2, 6)]]))


def test_split_batch_rejects_more_micro_batches_than_samples():
    assert [len(c[0]) for c in split_batch([torch.zeros(10, 2)], 3)] == [4, 3, 3]
    with pytest.raises(Exception, match="micro-batches must be in 1..10"):
        split_batch([torch.zeros(10, 2)], 11)


def test_run_export_on_ray_loads_each_part_in_its_actor(tmp_path):
    from cluster.runners import export_loaders
    from cluster.runtime import export_inputs, run_export
    from decomp.partition import load_export, manifest_layout, read_manifest
    from decomp.partition.job import SplitRequest, run_split

    run_split(SplitRequest("python:tests.tiny_models:tiny_net", 3), tmp_path / "out")
    report = run_export(tmp_path / "out", batch_size=4, micro_batches=2, batches=3, transport="gloo")
    assert report.runner == "RayRunner" and report.parts == 3 and all(b > 0 for b in report.busy_s)
    assert report.transports == ("gloo", "gloo", "object-store") and report.devices == ("cpu",) * 3
    manifest = read_manifest(tmp_path / "out")
    (x,) = export_inputs(manifest, 6)
    with RayRunner(manifest_layout(manifest), export_loaders(tmp_path / "out")) as runner:
        (got,) = next(runner.map([[x]]))
    torch.testing.assert_close(got, load_export(tmp_path / "out")(x)[0])


def test_a_changed_or_missing_part_file_is_named_on_ray(tmp_path):
    from cluster.runners import export_loaders
    from decomp.errors import ExportError
    from decomp.partition import manifest_layout, read_manifest
    from decomp.partition.job import SplitRequest, run_split

    run_split(SplitRequest("python:tests.tiny_models:tiny_net", 2), tmp_path / "out")
    layout = manifest_layout(read_manifest(tmp_path / "out"))
    part = tmp_path / "out" / "part_1.pt2"
    part.write_bytes(part.read_bytes() + b"x")
    with pytest.raises(ExportError, match=r"part_1.pt2 has changed since export \(sha256"):
        RayRunner(layout, export_loaders(tmp_path / "out"))
    part.unlink()
    with pytest.raises(ExportError, match=r"part_1.pt2 is missing; the manifest lists it"):
        RayRunner(layout, export_loaders(tmp_path / "out"))


def test_calibrate_on_ray_predicts_two_stage_candidates(tmp_path):
    from cluster.calibrate import CalibrateRequest, run_calibration

    request = CalibrateRequest(
        ("python:tests.tiny_models:tiny_net",),
        ratios=(0.0, 0.5),
        holdout=(0.25,),
        parts=(1, 2),
        batch_size=4,
        micro_batches=2,
        batches=2,
        rounds=1,
        table=str(tmp_path / "t.json"),
        out=str(tmp_path / "c.json"),
    )
    summary = run_calibration(request)
    two = [row for row in summary.candidates if row.candidate.endswith("K=2")]
    assert len(two) == 3 and all(row.predicted > 0 and row.measured > 0 for row in two)
    assert summary.holdout_mape is not None


def test_split_balanced_by_running_candidates_on_ray(tmp_path):
    import json

    from typer.testing import CliRunner

    from cluster.cli import app
    from decomp.partition import read_manifest

    out, js = tmp_path / "out", tmp_path / "summary.json"
    args = ["split", "python:tests.tiny_models:tiny_net", "--balance", "run", "--tune-steps", "2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    summary = json.loads(js.read_text())
    runs = summary["tuning_runs"]
    assert 1 <= len(runs) <= 2 and all(len(r["stage_seconds"]) == 2 and min(r["stage_seconds"]) > 0 for r in runs)
    assert summary["max_abs_diff"] <= 1e-5 and read_manifest(out).expected_costs["tuning_runs"] == runs
    assert "(kept)" in result.output


class Fork(nn.Module):
    def forward(self, x):
        return x.relu(), x * 3


class Join(nn.Module):
    def forward(self, b, c):
        return b - c, c.sum(-1)


@pytest.mark.parametrize("transport", ["gloo", "object-store", "auto"])
def test_every_transport_gives_the_in_process_outputs(transport):
    torch.manual_seed(0)
    layout = PartsLayout(
        ["x"],
        ["y", "s"],
        [
            PartSpec("fork", ["x"], ["a", "b"]),
            PartSpec("mid", ["a"], ["c"]),
            PartSpec("join", ["b", "c"], ["y", "s"]),
        ],
    )
    modules = [Fork(), nn.Linear(5, 5), Join()]
    batches = [[torch.randn(4, 5)] for _ in range(6)]
    with RayRunner(layout, loaders_for(modules), transport=transport) as runner:
        got = list(runner.map(batches))
        transports = runner.transports
    direct = "gloo" if transport == "gloo" else "object-store"
    assert transports == [direct, direct, "object-store"]  # the caller collects the last part's outputs
    for out, (x,) in zip(got, batches, strict=True):
        want = run_local(layout, modules, x)
        assert len(out) == 2
        for a, b in zip(out, want, strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=0)
    out[0].add_(1)  # the caller's own copy


def test_a_transport_no_part_can_use_is_refused():
    layout, modules = _layout_and_modules()
    with pytest.raises(DecompError, match="transport nccl carries tensors between GPU parts"):
        RayRunner(layout, loaders_for(modules), transport="nccl")


@pytest.mark.parametrize("transport", ["gloo", "object-store"])
def test_a_width_split_export_runs_on_ray_and_matches(tmp_path, transport):
    from cluster.runners import export_loaders
    from cluster.runtime import export_inputs
    from decomp.partition import load_export, manifest_layout, read_manifest
    from decomp.partition.job import SplitRequest, run_split
    from decomp.partition.width import WidthSplit

    width = (WidthSplit("stem", 2), WidthSplit("fc", 2))
    run_split(SplitRequest("python:tests.tiny_models:tiny_net", 2, "dag", width=width), tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    (x,) = export_inputs(manifest, 5)
    with RayRunner(manifest_layout(manifest), export_loaders(tmp_path / "out"), transport=transport) as runner:
        (got,) = next(runner.map([[x]]))
    torch.testing.assert_close(got, load_export(tmp_path / "out")(x)[0], atol=1e-6, rtol=0)


def test_an_early_exit_export_runs_on_ray_sending_only_the_inputs_that_go_on(tmp_path):
    from cluster.exit_runner import ExitRunner
    from cluster.runners import export_loaders
    from decomp.build import build_graph
    from decomp.partition import export_split, manifest_layout, read_manifest, split_model
    from decomp.partition.exits import ExitModel, exit_plan

    torch.manual_seed(0)
    backbone = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    ).eval()
    x = torch.randn(16, 1, 8, 8)
    exits = ExitModel(backbone, (x,), ["_1"]).eval()
    export_split(split_model(exits, (x,), exit_plan(build_graph(exits, (x,)), exits)), tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    with torch.no_grad():
        final, (early,) = exits(x)
    threshold = float(early.softmax(-1).max(-1).values.median())  # about half the inputs leave early
    batches = [[x[:8]], [x[8:]]]
    with ExitRunner(manifest_layout(manifest), export_loaders(tmp_path / "out"), threshold) as runner:
        got = list(runner.map(batches))
        report = runner.report()
    logits = torch.cat([g[0] for g in got])
    exited = torch.cat([g[1] for g in got])
    assert torch.equal(exited, early.softmax(-1).max(-1).values >= threshold) and 0 < report.exited < 16
    torch.testing.assert_close(logits, torch.where(exited[:, None], early, final), atol=1e-5, rtol=0)
    assert report.bytes_kept == report.exited * 8 * 8 * 8 * 4


def test_a_gated_models_closed_channels_are_not_sent_between_parts(tmp_path):
    """A channel-gated CNN cut after a gated activation: with `sparse`, part 0 sends only the open channels
    (half of them at keep 0.5, per micro-batch of one), and the outputs are the same."""
    import networkx as nx

    from decomp.build import build_graph
    from decomp.partition import PartitionPlan, split_model
    from decomp.pruning.channel_gating import GatedModel

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()
    x = torch.randn(1, 1, 6, 6)
    gated = GatedModel(model, (x,), 0.5).eval()
    graph = build_graph(gated, (x,))
    conv = next(n for n in graph.compute_nodes() if graph[n].get("module") == "backbone.2")
    (cut,) = graph.nx.predecessors(conv)  # the gated activation the second conv reads
    first = {cut, *nx.ancestors(graph.nx, cut)}
    plan = PartitionPlan.from_assignment({n: 0 if n in first else 1 for n in graph.compute_nodes()}, "dag", graph=graph)
    split = split_model(gated, (x,), plan)
    batches = [[torch.randn(1, 1, 6, 6)] for _ in range(4)]
    sent = {}
    for sparse in (False, True):
        with RayRunner(split.layout, loaders_for(split.modules), sparse=sparse) as runner:
            got = list(runner.map(batches))
            sent[sparse] = runner.stats()[0]["bytes_out"]
        for (out,), (b,) in zip(got, batches, strict=True):
            torch.testing.assert_close(out, gated(b))
    assert sent[False] == 4 * 8 * 36 * 4 and sent[True] == 4 * (4 * 36 * 4 + 4 * 8)
    # exported, `decomp run --sparse` reports what part 0 sends per sample
    from cluster.runtime import run_export
    from decomp.partition import export_split

    export_split(split, tmp_path / "gated")
    per_sample = {s: run_export(tmp_path / "gated", 1, batches=2, sparse=s).bytes_out[0] for s in (False, True)}
    assert per_sample[False] == 8 * 36 * 4 and per_sample[True] == 4 * 36 * 4 + 4 * 8
