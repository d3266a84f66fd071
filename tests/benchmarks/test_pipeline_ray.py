"""Throughput of resnet50 split into 2 pipeline stages, each a 1-thread Ray actor, against the whole model
in one 1-thread actor (issue target >= 1.6x, reported with each run; 2.0x is the limit on 2 cores); and the
runtime's per-call overhead.

The same rounds measure what the machine's two cores give at that moment: two copies of the whole model
side by side, each in its own 1-thread actor, against one. On this shared VM that capacity drifts (1.6x to
2.0x: the host's other tenants), and a 2-stage pipeline can only reach a share of it. The assertion is on
that share (a floor only a broken pipeline misses: stages serialised, transfers stalled), so a busy host
does not fail the run; the figure against the target is reported either way.

Both sides run what `decomp split` and `decomp run` run: the model is split (2 stages with `--balance run`:
the DP optimum over op times profiled on this machine with 1 thread, tuned by short runs of candidate splits
on Ray actors; the whole model a 1-part plan), exported, verified, and every actor loads its part from the
export folder. They stream the same micro-batches, alternated in rounds so machine noise hits both.

The floor is asserted at full size. At smoke size resnet18 goes the same way (split, tuned by short runs,
exported, loaded by actors, outputs checked against the model), in one short round and fewer overhead calls.
"""

import functools
import os
import statistics
import time

import pytest
import torch
from torch import nn

from cluster.runners import LocalRunner, RayRunner, export_loaders, loaders_for
from cluster.runtime import measure, stage_seconds
from decomp import build_graph, load_model
from decomp.partition import (
    PartitionPlan,
    PartsLayout,
    PartSpec,
    manifest_layout,
    optimal_pipeline,
    partition_metrics,
    read_manifest,
)
from decomp.partition.job import SplitRequest, run_split
from tests.benchmarks import size
from tests.benchmarks.record import record

pytestmark = [pytest.mark.benchmark, pytest.mark.usefixtures("local_ray")]
# 12 logical CPUs so the 1-actor, 2-stage (by both transports), 3-stage, 2-copy and 2-replica runners' actors
# all stay up; one runner works at a time
RAY_CPUS = 12

BATCH, MICRO_BATCHES = 8, 4  # micro-batches of 2 images
# per runner per round: 64 micro-batches, so filling and draining the pipeline costs ~1.5%
BATCHES = size.pick(full=16, smoke=2)
MODEL = size.pick(full="resnet50", smoke="resnet18")
SPEC = f"torchvision:{MODEL}"
TUNE_CALLS = size.pick(full=32, smoke=8)  # micro-batches per tuning run
TUNE_STEPS = size.pick(full=5, smoke=2)  # splits run at most while tuning
ROUNDS = size.pick(full=5, smoke=1)  # alternated rounds, so a burst of load from the VM's neighbours hits both
TARGET = 1.6  # the target, reported; on this shared VM runs land between 1.5x and 1.8x
FLOOR = 0.75  # asserted: the pipeline's speedup over the machine's capacity in the same rounds (~0.9 measured)
OVERHEAD_CALLS = size.pick(full=200, smoke=20)
HOP_FLOATS = 800_000  # a 3.2 MB float32 activation (resnet50's at its 2-stage cut, 2 images: ~3.2 MB)
HOP_CALLS = size.pick(full=100, smoke=10)
HOP_ROUNDS = size.pick(full=5, smoke=1)


class _Make(nn.Module):
    """Makes a fresh 3.2 MB activation from a 1-element input."""

    def forward(self, x):
        return torch.ones(1, HOP_FLOATS) * x


class _Take(nn.Module):
    def forward(self, h):
        return h[:, :1].clone()


def test_a_3mb_hop_by_each_transport():
    """Milliseconds a 3.2 MB activation adds per micro-batch when it crosses from one actor to another, by
    the object store and by gloo (Ray Direct Transport), one micro-batch at a time: two parts (make, take)
    against one part doing both, alternated in rounds."""
    one = PartsLayout(["x"], ["y"], [PartSpec("both", ["x"], ["y"])])
    two = PartsLayout(["x"], ["y"], [PartSpec("make", ["x"], ["h"]), PartSpec("take", ["h"], ["y"])])
    runners = {
        "no hop (1 part)": RayRunner(one, loaders_for([nn.Sequential(_Make(), _Take())]), max_in_flight=1),
        "object-store": RayRunner(two, loaders_for([_Make(), _Take()]), max_in_flight=1, transport="object-store"),
        "gloo": RayRunner(two, loaders_for([_Make(), _Take()]), max_in_flight=1, transport="gloo"),
    }
    try:
        assert runners["gloo"].transports == ["gloo", "object-store"]
        x = torch.full((1, 1), 2.0)
        for runner in runners.values():
            ((y,),) = list(runner.map([[x]]))
            assert float(y) == 2.0
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(HOP_ROUNDS):
            for name, runner in runners.items():
                times[name].append(_round_trip_ms(runner, HOP_CALLS, x))
    finally:
        for runner in runners.values():
            runner.close()
    base = times["no hop (1 part)"]
    hops = {name: [t - b for t, b in zip(times[name], base, strict=True)] for name in ("object-store", "gloo")}
    lines = [
        "## A 3.2 MB hop between two actors, by transport (CPU, one micro-batch at a time)",
        "",
        f"A part makes a fresh 1x{HOP_FLOATS} float32 tensor, the next reads it; against one part doing both. "
        f"Median of {HOP_ROUNDS} rounds of {HOP_CALLS} calls per runner, the runners taking turns.",
        "",
        "| transport | ms per micro-batch | ms the hop adds |",
        "|---|---|---|",
        f"| no hop (1 part) | {statistics.median(base):.2f} | |",
        *[
            f"| {name} | {statistics.median(times[name]):.2f} | {statistics.median(hop):.2f} |"
            for name, hop in hops.items()
        ],
        "",
        "gloo here is Ray Direct Transport (`@ray.method(tensor_transport=...)` with a collective group of the parts' "
        "actors): the tensor stays in the producing actor and is sent by gloo when the reader asks, with Ray's "
        "control messages around each send; the object store copies it once into shared memory as a numpy array "
        "(`cluster.runners.to_wire`), read in place on one node. On GPUs the same mechanism sends by NCCL and keeps "
        "the tensor on the device, which is what it exists for.",
    ]
    record("transport-hop", lines)
    print("\n".join(lines))
    assert all(t > 0 for t in base)


def _round_trip_ms(runner, calls: int, x: torch.Tensor | None = None) -> float:
    x = torch.zeros(1, 4) if x is None else x
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


def measure_rounds(runners: dict, x, expected, batches: int, micro_batches: int, rounds: int) -> dict[str, list]:
    """Each runner's reports over `rounds` rounds of `batches` batches of `x`, the runners taking turns (so a
    burst of load hits a round of every runner), after a warm-up batch whose outputs must be `expected`;
    closes the runners."""
    try:
        reports: dict[str, list] = {name: [] for name in runners}
        for name, runner in runners.items():
            _, outs = measure(runner, [x], batches=1, micro_batches=micro_batches, warmup=1)
            for out in outs:
                assert (out - expected).abs().max() <= 1e-4, f"{name}: outputs differ from the model"
        for _ in range(rounds):
            for name, runner in runners.items():
                report, _ = measure(runner, [x], batches=batches, micro_batches=micro_batches, warmup=0)
                reports[name].append(report)
    finally:
        for runner in runners.values():
            runner.close()
    return reports


def race_exports(folders: dict, whole, x, expected, batches: int, micro_batches: int, rounds: int):
    """`measure_rounds` over a 1-thread `RayRunner` per export folder (by name) and `2 copies` of the export
    `whole` side by side (the machine's capacity); returns the reports and the load while they ran."""
    load_before = os.getloadavg()[0]
    runners = {
        name: RayRunner(manifest_layout(read_manifest(f)), export_loaders(f), threads=1) for name, f in folders.items()
    }
    runners["2 copies"] = _two_copies(whole)
    reports = measure_rounds(runners, x, expected, batches, micro_batches, rounds)
    return reports, f"1-min load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"


def _two_copies(folder) -> RayRunner:
    """Two actors that each run the whole exported model on the same micro-batches, side by side."""
    layout = manifest_layout(read_manifest(folder))
    (name,), (out,) = layout.inputs, layout.outputs
    copies = [PartSpec(f"copy_{c}", [name], [f"{out}_{c}"]) for c in "ab"]
    whole = export_loaders(folder)[0]
    return RayRunner(PartsLayout([name], [f"{out}_a", f"{out}_b"], copies), [whole, whole], threads=1)


def test_resnet50_two_stage_pipeline_throughput(tmp_path):
    shape = (BATCH // MICRO_BATCHES, 3, 224, 224)  # the parts are exported for (and tuned on) one micro-batch
    request = SplitRequest(SPEC, 2, input_shapes=(shape,), balance="run", threads=1, tune_steps=TUNE_STEPS)
    run_stages = functools.partial(stage_seconds, threads=1, batches=TUNE_CALLS)
    summary = run_split(request, tmp_path / "two", run_stages=run_stages).to_json()
    run_split(SplitRequest(SPEC, 1, input_shapes=(shape,)), tmp_path / "whole")
    three = SplitRequest(SPEC, 3, input_shapes=(shape,), balance="run", threads=1, tune_steps=TUNE_STEPS)
    run_split(three, tmp_path / "three", run_stages=run_stages)
    folders = {"whole": tmp_path / "whole", "2 stages": tmp_path / "two", "3 stages": tmp_path / "three"}
    loaded = load_model(SPEC, input_shapes=[shape])  # the weights run_split exported (seeded)
    graph = build_graph(loaded.module, loaded.example_inputs, loaded.tracer)
    by_macs = optimal_pipeline(graph, 2)
    plan = PartitionPlan.from_json(summary["plan"])
    metrics = partition_metrics(graph, plan)
    x = torch.randn(BATCH, 3, 224, 224)
    with torch.inference_mode():
        expected = loaded.module(x)

    load_before = os.getloadavg()[0]
    runners = {
        name: RayRunner(manifest_layout(read_manifest(folder)), export_loaders(folder), threads=1)
        for name, folder in folders.items()
    }
    two = tmp_path / "two"
    runners["2 stages, gloo"] = RayRunner(
        manifest_layout(read_manifest(two)), export_loaders(two), threads=1, transport="gloo"
    )
    runners["2 copies"] = _two_copies(folders["whole"])
    whole = folders["whole"]
    runners["whole, 2 replicas"] = RayRunner(
        manifest_layout(read_manifest(whole)), export_loaders(whole), threads=1, replicas=2
    )
    reports = measure_rounds(runners, x, expected, BATCHES, MICRO_BATCHES, ROUNDS)
    load = f"1-min load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    rounds = list(zip(reports["whole"], reports["2 stages"], reports["2 copies"], strict=True))
    ratios = [p.throughput / w.throughput for w, p, _ in rounds]
    capacities = [2 * c.throughput / w.throughput for w, _, c in rounds]  # each copy ran every image
    shares = [r / c for r, c in zip(ratios, capacities, strict=True)]
    speedup, capacity, share = (statistics.median(v) for v in (ratios, capacities, shares))
    gloo_shares = [
        g.throughput / w.throughput / c
        for g, w, c in zip(reports["2 stages, gloo"], reports["whole"], capacities, strict=True)
    ]
    gloo_share = statistics.median(gloo_shares)
    replica_ratios = [
        r.throughput / w.throughput for r, w in zip(reports["whole, 2 replicas"], reports["whole"], strict=True)
    ]
    replicas = statistics.median(replica_ratios)
    three_shares = [
        t.throughput / w.throughput / c
        for t, w, c in zip(reports["3 stages"], reports["whole"], capacities, strict=True)
    ]
    three_share = statistics.median(three_shares)
    overhead = _overheads()

    def row(name: str) -> str:
        rs = reports[name]
        busy = [statistics.median(r.busy_share[k] for r in rs) for k in range(len(rs[0].busy_share))]  # per actor
        images = rs[0].parts if name == "2 copies" else 1  # images computed per image streamed
        return (
            f"| {name} | {images * statistics.median(r.throughput for r in rs):.2f} "
            f"| {1000 * statistics.median(r.latency_median_s for r in rs):.0f} "
            f"| {', '.join(f'{100 * b:.0f}%' for b in busy)} |"
        )

    macs = [p.macs / metrics.batch for p in metrics.parts]
    nodes = graph.compute_nodes()

    def at(cuts: list[int]) -> str:
        return f"before op {cuts[0]} `{nodes[cuts[0]]}`"

    runs = summary["tuning_runs"]
    lines = [
        f"## Pipeline on Ray actors ({MODEL}, batches of {BATCH}x3x224x224 in {MICRO_BATCHES} micro-batches, CPU)",
        "",
        f"Split: `decomp split --balance run` (DP `optimal_pipeline` over {len(nodes)} ops; balancing MACs would cut "
        f"{at(by_macs.cuts(graph))}). On op times profiled here with 1 thread it cuts {at(runs[0]['cuts'])}. "
        "Stages running side by side take longer than their ops' profiled times, and unevenly, so the split is "
        f"tuned by running it (`tune_pipeline`: {TUNE_CALLS} micro-batches on 1-thread Ray actors, each stage's op "
        "times scaled to what it took, re-split; halfway between the two best balanced runs where a split comes "
        "back; the best balanced kept). Runs: "
        + "; ".join(
            f"{at(r['cuts'])}: {1000 * r['stage_seconds'][0]:.0f} + {1000 * r['stage_seconds'][1]:.0f} ms"
            + (" (kept)" if r["kept"] else "")
            for r in runs
        )
        + f". Kept split: MACs {macs[0] / 1e9:.2f} G + {macs[1] / 1e9:.2f} G per image, "
        f"{metrics.cut_bytes_per_sample / 1024:.0f} KiB per image between the stages. Each stage is a Ray actor "
        "with 1 torch thread that loads its part from the export folder; the baseline is the whole model "
        "exported as one part in one 1-thread actor.",
        "",
        "| runner | images/s (median) | latency per batch, ms | busy share per actor |",
        "|---|---|---|---|",
        row("whole"),
        row("2 stages"),
        row("2 stages, gloo"),
        row("3 stages"),
        row("2 copies"),
        row("whole, 2 replicas"),
        "",
        f"Throughput ratio 2 stages / whole: **{speedup:.2f}x** (target >= {TARGET}: "
        f"{'met' if speedup >= TARGET else 'NOT met'} in this run; limit 2.0; rounds "
        f"{min(ratios):.2f}..{max(ratios):.2f}). Median of {ROUNDS} rounds of {BATCHES} batches per runner, "
        f"the runners taking turns. {load} while timing.",
        "",
        "What the machine's two cores gave in the same rounds: two copies of the whole model side by side "
        "(`2 copies`: each in its own 1-thread actor, both on every micro-batch; images/s counts both) ran "
        f"{capacity:.2f}x one copy (rounds {min(capacities):.2f}..{max(capacities):.2f}; 2.0 on two free cores). "
        f"The pipeline reached {share:.2f} of that (median per round; the stages' time "
        "beyond the whole model's, imbalance, and the hops between actors take the rest). `2 stages` passes the "
        f"activation through the object store (`--transport auto` on CPU); `2 stages, gloo` by Ray Direct Transport "
        f"over gloo: {gloo_share:.2f} of the capacity. `3 stages` (split and tuned the same way, three 1-thread actors "
        f"on the two cores): {three_share:.2f} of the capacity (rounds {min(three_shares):.2f}.."
        f"{max(three_shares):.2f}).",
        "",
        f"Replicas (`decomp run --replicas 2`): two copies of the whole model, micro-batches dealt to them in "
        f"turn, ran **{replicas:.2f}x** one copy (rounds {min(replica_ratios):.2f}..{max(replica_ratios):.2f}; "
        f"the machine's capacity in the same rounds {capacity:.2f}x; target >= 1.8x on two free cores).",
        "",
        "Runtime overhead per micro-batch (parts that return their input, a 1x4 tensor):",
        "",
        "| path | ms per micro-batch |",
        "|---|---|",
        *[f"| {label} | {ms:.3f} |" for label, ms in overhead.items()],
    ]
    record("pipeline-ray", lines)
    print("\n".join(lines))
    if size.is_full():
        assert share >= FLOOR, (
            f"2-stage pipeline is {speedup:.2f}x the whole model's throughput, {share:.2f} of the {capacity:.2f}x "
            f"two copies reached side by side ({load}); floor {FLOOR}"
        )
