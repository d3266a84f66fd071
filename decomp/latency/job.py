"""The job behind `decomp profile`: build or update the op table of this device for a model, then
compare the predicted latency of the whole model with a measured one. With `sweep`, the table first
gets the layer sweep (`decomp.latency.sweep`) its op model learns from; with `unseen`, the model's own
ops are not profiled and the prediction is what the op model says for an architecture this device
never ran (learned from the table without this model's ops)."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from decomp.build import graph_from_module
from decomp.errors import SpecError
from decomp.latency.cluster import LOCAL, ClusterSpec, DeviceKind, NodeSpec
from decomp.latency.predict import LatencyModel
from decomp.latency.sweep import profile_sweep
from decomp.latency.table import OpTable, default_table_path, device_key, op_signature, profile_ops
from decomp.specs import load_model
from decomp.timing import device_sync
from decomp.tracing import trace

__all__ = ["ProfileRequest", "ProfileSummary", "measure_latency", "run_profile", "this_device"]


@dataclass(frozen=True)
class ProfileRequest:
    model: str
    device: str = "cpu"
    threads: int = 1
    table: str | None = None  # default: the cache path of this device key
    input_shapes: tuple[tuple[int, ...], ...] = field(default=())
    weights: str | None = None
    repeats: int = 20
    sweep: bool = False  # profile the layer sweep into the table first
    unseen: bool = False  # do not profile the model's ops: price them as a new architecture

    def __post_init__(self) -> None:
        if self.threads < 1 or self.repeats < 1:
            raise SpecError(f"threads and repeats must be >= 1, got {self.threads} and {self.repeats}")
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise SpecError(f"device {self.device!r} asked for, but torch sees no CUDA device here; use --device cpu")


@dataclass(frozen=True)
class ProfileSummary:
    """What a `decomp profile` job did (`to_json()` for `--json`): the request, the device key and the op
    table it updated (`table`, holding `table_entries` entries), the model's op count and how many of its
    ops were profiled now (the rest were in the table), the seconds profiling took, and one forward pass
    predicted from the table against measured (`error`: predicted / measured - 1)."""

    request: ProfileRequest
    device: str
    table: str
    table_entries: int
    ops: int
    ops_profiled_now: int
    profile_seconds: float
    predicted_s: float
    measured_s: float
    error: float
    ops_learned: int = 0  # ops priced by the op model (no table entry)
    sweep_added: int = 0  # signatures the layer sweep added

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def this_device(device: str = "cpu", threads: int = 1, count: int = 1) -> ClusterSpec:
    """A cluster of `count` devices like the one the profiler runs on, on this host (roofline figures are
    placeholders: every op of a profiled model has a measured entry; transfers between the devices are
    free here, what a runtime adds is its calibration's runtime terms)."""
    kind = DeviceKind(device_key(device, threads), "gpu" if device.startswith("cuda") else "cpu", 1e12, 1e11, 2**40)
    return ClusterSpec("here", (kind,), (NodeSpec("here", ((kind.name, count),)),), LOCAL, LOCAL)


def measure_latency(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], repeats: int = 20, warmup: int = 3, stat: str = "median"
) -> float:
    """Seconds of one forward pass (inference mode): the median over `repeats`, or the least (`stat='min'`)."""
    times = []
    sync = device_sync(model, inputs)
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if sync is not None:
                sync()
            start = time.perf_counter()
            model(*inputs)
            if sync is not None:
                sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return min(times) if stat == "min" else statistics.median(times)


def run_profile(request: ProfileRequest) -> ProfileSummary:
    """Profile the model's ops missing from the table (then save it), predict and measure its latency."""
    shapes = [tuple(s) for s in request.input_shapes] or None
    loaded = load_model(request.model, weights=request.weights, input_shapes=shapes)
    device = torch.device(request.device)
    model = loaded.module.to(device)
    inputs = tuple(x.to(device) for x in loaded.example_inputs)
    key = device_key(device, request.threads)
    path = Path(request.table) if request.table else default_table_path(key)
    table = OpTable.load(path, key)
    before = torch.get_num_threads()
    torch.set_num_threads(request.threads)
    try:
        started = time.perf_counter()
        swept = profile_sweep(table, threads=request.threads) if request.sweep else 0
        if request.unseen:
            gm = trace(model, inputs, tracer=loaded.tracer)
            graph, measured_ops = graph_from_module(gm, name=request.model, tracer=loaded.tracer), 0
        else:
            graph, measured_ops = profile_ops(
                model, inputs, table, loaded.tracer, threads=request.threads, repeats=request.repeats
            )
        profile_s = time.perf_counter() - started
        table.save(path)
        measured = measure_latency(model, inputs, request.repeats)
    finally:
        torch.set_num_threads(before)
    pricing = table
    if request.unseen:  # learn from every entry but this model's own ops
        own = {op_signature(graph, n) for n in graph.compute_nodes()}
        pricing = OpTable(key, {s: t for s, t in table.entries.items() if s not in own})
        if pricing.op_model() is None:
            raise SpecError(
                f"the op table {path} holds {len(pricing)} entries besides this model's ops, too few to learn "
                "from; run decomp profile --sweep first"
            )
    cluster = this_device(request.device, request.threads)
    prediction = LatencyModel(cluster, {key: pricing}).predict(graph)
    predicted = prediction.compute_s[0]
    return ProfileSummary(
        request=request,
        device=key,
        table=str(path),
        table_entries=len(table),
        ops=len(graph.compute_nodes()),
        ops_profiled_now=measured_ops,
        profile_seconds=profile_s,
        predicted_s=predicted,
        measured_s=measured,
        error=predicted / measured - 1.0,
        ops_learned=prediction.estimated_ops,
        sweep_added=swept,
    )
