"""The job behind `decomp calibrate`: run real candidates through the runtime, fit the latency model's
calibration for this device and runtime, and save it beside the op table.

Candidates are the given models at the given structured prune ratios, each split into pipelines of the
given part counts (the DP split on this device's op-table times). Every candidate is timed in
`rounds` rounds interleaved over all candidates (this machine's speed drifts; interleaving lets the
drift hit every candidate alike) and its fastest round is kept, as the op tables keep least times.
A run streams `batches` batches and more until `min_seconds` have passed: a small model's few batches
take a fraction of a second, and the runtime's noise would decide its figure.
From those runs:

- the compute terms (`scale`, `per_op`, `per_byte`, `fixed`): each stage's busy seconds per call
  against its summed table times, op count and activation traffic (`decomp.latency.calibrate`);
- the runtime terms (`per_call`, `per_in_byte`): wall seconds per micro-batch beyond the slowest
  stage's busy seconds per call, against the bytes that stage receives (`fit_runtime`).

Op times are profiled in place in `rounds` rounds over all candidates too, the least time of each op
kept (`OpTable.merge`).

The summary lists, per candidate, the throughput measured and the throughput the calibrated model
predicts. Candidates at the `holdout` prune ratios are profiled and measured with the others but left
out of the fit: their error (`holdout_mape`) is how well the calibration predicts candidates it has
not seen; the others' (`mape`) is in-sample.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cluster.runners import LocalRunner, RayRunner, loaders_for
from cluster.runtime import measure
from decomp.errors import SpecError
from decomp.latency.calibration import RUNTIMES, default_calibration_path, fit_runtime, save_calibration
from decomp.latency.job import this_device
from decomp.latency.predict import Calibration, LatencyModel, activation_traffic, calibrate
from decomp.latency.table import OpTable, default_table_path, device_key, profile_ops
from decomp.partition import PartitionPlan, StageCost, crossings, optimal_pipeline, split_model
from decomp.pruning import apply_plan, find_groups, plan_for_ratio
from decomp.specs import load_model
from decomp.timing import annotate_op_times

__all__ = ["CalibrateRequest", "CalibrationSummary", "CandidateFit", "run_calibration"]


@dataclass(frozen=True)
class CalibrateRequest:
    models: tuple[str, ...]
    ratios: tuple[float, ...] = (0.0, 0.5)
    holdout: tuple[float, ...] = ()  # prune ratios measured and predicted but not fitted on
    parts: tuple[int, ...] = (1, 2)
    batch_size: int = 8
    micro_batches: int = 4
    batches: int = 6
    rounds: int = 2
    threads: int = 1
    runtime: str = "ray"
    table: str | None = None
    out: str | None = None
    min_seconds: float = 1.0  # each timed run streams at least `batches` and at least this long

    def __post_init__(self) -> None:
        if not self.models:
            raise SpecError("calibration needs at least one model spec")
        if self.runtime not in RUNTIMES:
            raise SpecError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if self.batch_size % self.micro_batches:
            raise SpecError(
                f"batch size {self.batch_size} does not split into {self.micro_batches} equal micro-batches; "
                "pick a batch size that is a multiple of --micro-batches"
            )
        for name, value in (("batches", self.batches), ("rounds", self.rounds), ("threads", self.threads)):
            if value < 1:
                raise SpecError(f"{name} must be >= 1, got {value}")
        if self.min_seconds < 0:
            raise SpecError(f"min_seconds must be >= 0, got {self.min_seconds}")
        if any(not 0.0 <= r < 1.0 for r in (*self.ratios, *self.holdout)):
            raise SpecError(f"prune ratios must be in [0, 1), got {[*self.ratios, *self.holdout]}")
        shared = sorted(set(self.ratios) & set(self.holdout))
        if shared:
            raise SpecError(
                f"ratio(s) {shared} are both fitted on and held out; a held-out ratio must not be among --ratios"
            )
        if any(k < 1 for k in self.parts):
            raise SpecError(f"part counts must be >= 1, got {list(self.parts)}")
        if self.runtime == "local" and any(k > 1 for k in self.parts):
            raise SpecError(
                "the local runner calls parts one after another, so it has no pipeline to calibrate; "
                "use --runtime ray for part counts above 1, or --parts 1"
            )
        runs = len(self.models) * len(self.ratios) * sum(self.parts)
        if runs < 3:
            raise SpecError(
                f"these settings give {runs} stage measurements; the fit needs at least 3 "
                "(add prune ratios, part counts or models)"
            )


@dataclass(frozen=True)
class CandidateFit:
    """One candidate's throughput (samples per second) as measured and as the fitted calibration predicts
    it, the relative `error` (predicted / measured - 1), and whether it was held out of the fit."""

    candidate: str
    measured: float
    predicted: float
    error: float
    held_out: bool


@dataclass(frozen=True)
class CalibrationSummary:
    """What a calibration did (`to_json()` for `--json`): the request, the device key, the op table and the
    calibration file it wrote, the fitted calibration, every candidate's fit, the mean absolute error over
    the fitted candidates (`mape`) and over the held-out ones (`holdout_mape`, None without any), and the
    seconds it took."""

    request: CalibrateRequest
    device: str
    table: str
    calibration_file: str
    calibration: Calibration
    candidates: tuple[CandidateFit, ...]
    mape: float
    holdout_mape: float | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Candidate:
    name: str
    graph: Any
    plan: PartitionPlan
    split: Any
    held_out: bool = False
    best: Any = None  # the fastest RunReport


def _candidates(request: CalibrateRequest, table: OpTable, key: str, note: Callable[[str], None]) -> list[_Candidate]:
    micro = request.batch_size // request.micro_batches
    pruned = []  # (spec, ratio, held out, model, inputs, tracer)
    for spec in request.models:
        loaded = load_model(spec)
        inputs = tuple(x[:1].expand(micro, *x.shape[1:]).contiguous() for x in loaded.example_inputs)
        ratios = [(r, False) for r in request.ratios] + [(r, True) for r in request.holdout]
        for ratio, held_out in sorted(ratios):
            model = loaded.module
            if ratio > 0:
                index = find_groups(model, inputs)
                model = apply_plan(model, plan_for_ratio(index, ratio), inputs, index=index).module
            pruned.append((spec, ratio, held_out, model, inputs, loaded.tracer))
    graphs = []
    for r in range(request.rounds):  # each round profiles every op into a fresh table; least times kept
        fresh = OpTable(key)
        graphs = []
        for spec, ratio, _, model, inputs, tracer in pruned:
            note(f"profiling round {r + 1}/{request.rounds}: {spec} pruned {ratio:.2f}")
            graphs.append(profile_ops(model, inputs, fresh, tracer, threads=request.threads)[0])
        table.merge(fresh)
    cluster = this_device("cpu", request.threads)
    priced = LatencyModel(cluster, {key: table})
    out = []
    for (spec, ratio, held_out, model, inputs, tracer), graph in zip(pruned, graphs, strict=True):
        seconds, _ = priced.op_seconds(graph, cluster.kinds[0])
        annotate_op_times(graph, seconds)
        for k in request.parts:
            plan = optimal_pipeline(graph, k, StageCost(measured=True)) if k > 1 else PartitionPlan.pipeline(graph, [])
            split = split_model(model, inputs, plan, tracer=tracer)
            out.append(_Candidate(f"{spec} x{1 - ratio:.2f} K={k}", graph, plan, split, held_out))
    return out


def _runner(request: CalibrateRequest, split) -> LocalRunner | RayRunner:
    loaders = loaders_for(split.modules)
    if request.runtime == "local":
        return LocalRunner(split.layout, loaders, threads=request.threads)
    return RayRunner(split.layout, loaders, threads=request.threads)


def _stage_features(graph, plan: PartitionPlan, seconds: dict[str, float]) -> list[dict[str, float]]:
    members = plan.members()
    in_bytes = [0] * plan.parts
    for _, _src, dst, nbytes in crossings(graph, plan):
        in_bytes[dst] += nbytes
    return [
        {
            "op_seconds": sum(seconds[n] for n in nodes),
            "ops": len(nodes),
            "traffic": activation_traffic(graph, nodes),
            "in_bytes": in_bytes[p],
        }
        for p, nodes in enumerate(members)
    ]


def run_calibration(request: CalibrateRequest, note: Callable[[str], None] = lambda _: None) -> CalibrationSummary:
    """Profile, run and fit; save the calibration and return a summary (see the module docstring)."""
    started = time.perf_counter()
    key = device_key("cpu", request.threads)
    table_path = Path(request.table) if request.table else default_table_path(key)
    table = OpTable.load(table_path, key)
    before = torch.get_num_threads()
    torch.set_num_threads(request.threads)
    try:
        candidates = _candidates(request, table, key, note)
    finally:
        torch.set_num_threads(before)
    table.save(table_path)
    x_cache: dict[int, list[torch.Tensor]] = {}
    for r in range(request.rounds):
        for c in candidates:
            note(f"round {r + 1}/{request.rounds}: {c.name}")
            x = x_cache.setdefault(
                id(c.split),
                [t[:1].expand(request.batch_size, *t.shape[1:]).contiguous() for t in c.split.example_inputs],
            )
            runner = _runner(request, c.split)
            try:
                report, _ = measure(
                    runner,
                    x,
                    batches=request.batches,
                    micro_batches=request.micro_batches,
                    min_seconds=request.min_seconds,
                )
            finally:
                runner.close()
            if c.best is None or report.throughput > c.best.throughput:
                c.best = report
    # fit: compute terms on every stage's busy time per call, runtime terms on the gap above the bottleneck
    stages, gaps, gap_bytes, runs = [], [], [], []
    for c in candidates:
        calls = c.best.batches * c.best.micro_batches
        features = _stage_features(c.graph, c.plan, {n: c.graph[n]["seconds"] for n in c.graph.compute_nodes()})
        runs.append({"candidate": c.name, "held_out": c.held_out, "report": c.best.to_json(), "stages": features})
        if c.held_out:
            continue
        busy = [b / calls for b in c.best.busy_s]
        for f, b in zip(features, busy, strict=True):
            stages.append((f, b))
        slowest = max(range(len(busy)), key=busy.__getitem__)
        gaps.append(c.best.seconds / calls - busy[slowest])
        gap_bytes.append(features[slowest]["in_bytes"])
    compute = calibrate(
        [f["op_seconds"] for f, _ in stages],
        [f["ops"] for f, _ in stages],
        [b for _, b in stages],
        [f["traffic"] for f, _ in stages],
    )
    per_call, per_in_byte = fit_runtime(gaps, gap_bytes)
    fitted = Calibration(**{**asdict(compute), "per_call": per_call, "per_in_byte": per_in_byte})
    out = Path(request.out) if request.out else default_calibration_path(key, request.runtime)
    save_calibration(out, key, request.runtime, fitted, runs)
    cluster = this_device("cpu", request.threads, max(request.parts))
    model = LatencyModel(cluster, {key: table}, {key: fitted})
    rows = []
    for c in candidates:
        streamed = c.best.batches * c.best.micro_batches
        predicted = model.predict(c.graph, c.plan, micro_batches=streamed).throughput
        rows.append(CandidateFit(c.name, c.best.throughput, predicted, predicted / c.best.throughput - 1.0, c.held_out))
    held_rows = [r for r in rows if r.held_out]
    return CalibrationSummary(
        request=request,
        device=key,
        table=str(table_path),
        calibration_file=str(out),
        calibration=fitted,
        candidates=tuple(rows),
        mape=statistics.fmean(abs(r.error) for r in rows if not r.held_out),
        holdout_mape=statistics.fmean(abs(r.error) for r in held_rows) if held_rows else None,
        seconds=time.perf_counter() - started,
    )
