"""Throughput of resnet50 split into 2 pipeline stages, each a 1-thread Ray actor, against the whole model
in one 1-thread actor (issue target >= 1.6x, reported with each run; 2.0x is the limit on 2 cores; the
assertion is a floor of 1.3x that only a broken pipeline misses); and the runtime's per-call overhead.

Both sides run what `decomp run` runs: the model is split (the 2-stage plan is the DP optimum of
`optimal_pipeline` over op times measured on this machine with 1 thread, tuned by short runs of the split
with `tune_pipeline`; the whole model a 1-part plan), exported, and every actor loads its part from the
export folder. They stream the same micro-batches, alternated in rounds so machine noise hits both.
"""

import os
import statistics
import time

import pytest
import ray
import torch
import torchvision.models as tvm
from torch import nn

from cluster.connect import connect
from cluster.runtime import LocalRunner, RayRunner, export_loaders, loaders_for, measure
from decomp import build_graph
from decomp.latency import annotate_op_times, op_times, tune_pipeline
from decomp.partition import (
    PartitionPlan,
    PartsLayout,
    PartSpec,
    StageCost,
    export_split,
    manifest_layout,
    optimal_pipeline,
    partition_metrics,
    pipeline_stage_times,
    read_manifest,
    split_model,
)
from tests.benchmarks.record import record

pytestmark = pytest.mark.benchmark

BATCH, MICRO_BATCHES = 8, 4  # micro-batches of 2 images
BATCHES = 10  # per runner per round: 40 micro-batches, so filling and draining the pipeline costs ~2.5%
TUNE_BATCHES = 6  # per tuning run: 24 micro-batches
TUNE_STEPS = 4  # splits run at most while tuning
ROUNDS = 7  # short alternated rounds, so a burst of load from the VM's neighbours hits both runners alike
TARGET = 1.6  # the target, reported; on this shared VM runs land between 1.5x and 1.8x
FLOOR = 1.3  # asserted: below this the pipeline itself is broken (stages serialised, transfers stalled)
OVERHEAD_CALLS = 200


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    # 3 logical CPUs so the 1-part and the 2-part runner's actors all stay up; only one runner works at a time
    connect(num_cpus=3)
    yield
    ray.shutdown()


def _export(model, x, plan, folder):
    return export_split(split_model(model, (x,), plan), folder, source="torchvision:resnet50")


def _round_trip_ms(runner, calls: int) -> float:
    x = torch.zeros(1, 4)
    for _ in runner.map([[x]] * 20):  # warm up
        pass
    start = time.perf_counter()
    for _ in runner.map([[x]] * calls):
        pass
    return 1000 * (time.perf_counter() - start) / calls


def _overheads() -> dict[str, float]:
    """Milliseconds per micro-batch through parts that do nothing: the runtime's own cost per call."""
    one = PartsLayout(["x"], ["y"], [PartSpec("p0", ["x"], ["y"])])
    two = PartsLayout(["x"], ["z"], [PartSpec("p0", ["x"], ["y"]), PartSpec("p1", ["y"], ["z"])])
    out = {"local, 1 part": _round_trip_ms(LocalRunner(one, loaders_for([nn.Identity()])), OVERHEAD_CALLS)}
    for label, layout, in_flight in [
        ("Ray, 1 part, one call at a time", one, 1),
        ("Ray, 1 part, pipelined (4 in flight)", one, 4),
        ("Ray, 2 parts, pipelined (4 in flight)", two, 4),
    ]:
        modules = [nn.Identity() for _ in layout.parts]
        with RayRunner(layout, loaders_for(modules), max_in_flight=in_flight) as runner:
            out[label] = _round_trip_ms(runner, OVERHEAD_CALLS)
    return out


def test_resnet50_two_stage_pipeline_throughput(tmp_path):
    torch.manual_seed(0)
    model = tvm.resnet50().eval()
    micro = torch.randn(BATCH // MICRO_BATCHES, 3, 224, 224)
    graph = build_graph(model, micro)
    annotate_op_times(graph, op_times(model, micro, repeats=5, threads=1))
    cost = StageCost(bytes_per_s=1e9, measured=True)  # op times as measured; ~1 GB/s through the object store
    by_macs = optimal_pipeline(graph, 2)
    profiled = optimal_pipeline(graph, 2, cost)
    profiled_ms = [1000 * t for t in pipeline_stage_times(graph, profiled, cost)]
    x = torch.randn(BATCH, 3, 224, 224)
    # tune: stages running side by side take longer than their profiled ops, unevenly, so run the split briefly,
    # scale each stage's op times to what it took, re-split; keep the split whose slowest stage was fastest
    exported, throughput = {}, {}

    def run(plan: PartitionPlan) -> list[float]:
        exported[plan] = _export(model, micro, plan, tmp_path / f"tune{len(exported)}")
        layout, loaders = manifest_layout(read_manifest(exported[plan])), export_loaders(exported[plan])
        with RayRunner(layout, loaders, threads=1) as runner:
            trial, _ = measure(runner, [x], batches=TUNE_BATCHES, micro_batches=MICRO_BATCHES, warmup=2)
        throughput[plan] = trial.throughput
        return [b / (trial.batches * trial.micro_batches) for b in trial.busy_s]

    trials = tune_pipeline(graph, 2, run, cost, steps=TUNE_STEPS)
    plan = trials[0].plan
    metrics = partition_metrics(graph, plan)
    whole = PartitionPlan.pipeline(graph, [])
    folders = {
        "whole": _export(model, micro, whole, tmp_path / "whole"),
        "2 stages": exported[plan],
    }
    with torch.inference_mode():
        expected = model(x)

    load_before = os.getloadavg()[0]
    runners = {
        name: RayRunner(manifest_layout(read_manifest(folder)), export_loaders(folder), threads=1)
        for name, folder in folders.items()
    }
    try:
        reports: dict[str, list] = {name: [] for name in runners}
        for name, runner in runners.items():  # warm up, and check the outputs
            _, (out,) = measure(runner, [x], batches=1, micro_batches=MICRO_BATCHES, warmup=1)
            assert (out - expected).abs().max() <= 1e-4, f"{name}: outputs differ from the model"
        for _ in range(ROUNDS):
            for name, runner in runners.items():
                report, _ = measure(runner, [x], batches=BATCHES, micro_batches=MICRO_BATCHES, warmup=0)
                reports[name].append(report)
    finally:
        for runner in runners.values():
            runner.close()
    load = f"1-min load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    ratios = [p.throughput / w.throughput for w, p in zip(reports["whole"], reports["2 stages"], strict=True)]
    speedup = statistics.median(ratios)
    overhead = _overheads()

    def row(name: str) -> str:
        rs = reports[name]
        busy = [statistics.median(r.busy_share[k] for r in rs) for k in range(rs[0].parts)]
        return (
            f"| {name} | {statistics.median(r.throughput for r in rs):.2f} "
            f"| {1000 * statistics.median(r.latency_median_s for r in rs):.0f} "
            f"| {', '.join(f'{100 * b:.0f}%' for b in busy)} |"
        )

    macs = [p.macs / metrics.batch for p in metrics.parts]
    nodes = graph.compute_nodes()

    def at(p: PartitionPlan) -> str:
        return f"before op {p.cuts(graph)[0]} `{nodes[p.cuts(graph)[0]]}`"

    lines = [
        f"## Pipeline on Ray actors (resnet50, batches of {BATCH}x3x224x224 in {MICRO_BATCHES} micro-batches, CPU)",
        "",
        f"Split: `optimal_pipeline` (DP over {len(nodes)} ops). Balancing MACs cuts {at(by_macs)}; on op times "
        f"measured here with 1 thread (`decomp.latency.op_times`, `StageCost(measured=True)`) it cuts "
        f"{at(profiled)} ({profiled_ms[0]:.0f} + {profiled_ms[1]:.0f} ms per micro-batch predicted). Stages "
        "running side by side take longer than their ops' profiled times, and unevenly, so the split is tuned by "
        f"running it (`tune_pipeline`: {TUNE_BATCHES * MICRO_BATCHES} micro-batches on the Ray actors, each stage's "
        "op times scaled to what it took, re-split, until a split repeats; the least bottleneck kept): "
        + "; ".join(
            f"{at(t.plan)}: stages {1000 * t.stage_seconds[0]:.0f} + {1000 * t.stage_seconds[1]:.0f} ms per "
            f"micro-batch, {throughput[t.plan]:.2f} images/s"
            for t in sorted(trials, key=lambda t: list(throughput).index(t.plan))
        )
        + f". Kept {at(plan)}: MACs {macs[0] / 1e9:.2f} G + {macs[1] / 1e9:.2f} G per image, "
        f"{metrics.cut_bytes_per_sample / 1024:.0f} KiB per image between the stages. Each stage is a Ray actor "
        "with 1 torch thread that loads its part from the export folder; the baseline is the whole model "
        "exported as one part in one 1-thread actor.",
        "",
        "| runner | images/s (median) | latency per batch, ms | busy share per actor |",
        "|---|---|---|---|",
        row("whole"),
        row("2 stages"),
        "",
        f"Throughput ratio 2 stages / whole: **{speedup:.2f}x** (target >= {TARGET}: "
        f"{'met' if speedup >= TARGET else 'NOT met'} in this run; limit 2.0; rounds "
        f"{min(ratios):.2f}..{max(ratios):.2f}). Median of {ROUNDS} alternated rounds of {BATCHES} batches each. "
        f"{load} while timing.",
        "",
        "Runtime overhead per micro-batch (parts that return their input, a 1x4 tensor):",
        "",
        "| path | ms per micro-batch |",
        "|---|---|",
        *[f"| {label} | {ms:.3f} |" for label, ms in overhead.items()],
    ]
    record("pipeline-ray", lines)
    print("\n".join(lines))
    assert speedup >= FLOOR, f"2-stage pipeline is {speedup:.2f}x the whole model's throughput ({load}); floor {FLOOR}x"
