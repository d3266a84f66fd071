"""Measured time of every op of a traced model, run in place (in a whole forward pass, so caches and
memory traffic are those the op sees in the real model).

The node names are those of `build_graph` on the same trace (same model, inputs, tracer and leaf
modules), so the times can be put on the graph (`annotate_op_times`) and used where MACs alone
misjudge time, e.g. `StageCost(measured=True)` for a pipeline split balanced in wall time.

On a GPU, kernels run asynchronously: the device is synchronised before and after each op's call, so
an op's time is its kernels' time, not the time to launch them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from decomp.errors import GraphError, InvalidPlanError
from decomp.graph import ModelGraph
from decomp.partition.baselines import StageCost, optimal_pipeline
from decomp.partition.plan import PartitionPlan
from decomp.tracing import trace

__all__ = [
    "PipelineTrial",
    "halfway_split",
    "annotate_op_times",
    "device_sync",
    "node_times",
    "op_times",
    "rescale_op_times",
    "tune_pipeline",
]


class _Timed(fx.Interpreter):
    """Runs the graph and adds the wall time of each node's call (not the interpreter's bookkeeping
    around it) to `seconds[node]`."""

    def __init__(self, gm: fx.GraphModule, sync: Callable[[], None] | None = None) -> None:
        super().__init__(gm)
        self.seconds: dict[str, list[float]] = {n.name: [] for n in gm.graph.nodes}
        self.sync = sync  # waits for the device's queued work (a GPU's), or None on a CPU

    def run_node(self, n: fx.Node) -> Any:
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            call = getattr(self, n.op)
            if self.sync is not None:
                self.sync()
            start = time.perf_counter()
            out = call(n.target, args, kwargs)
            if self.sync is not None:
                self.sync()
            self.seconds[n.name].append(time.perf_counter() - start)
        return out


def device_sync(gm: nn.Module, inputs: Sequence[Any]) -> Callable[[], None] | None:
    """`torch.cuda.synchronize` when `gm`'s parameters, buffers or `inputs` are on a CUDA device, else None."""
    tensors = [*gm.parameters(), *gm.buffers(), *(x for x in inputs if isinstance(x, torch.Tensor))]
    return torch.cuda.synchronize if any(t.is_cuda for t in tensors) else None


def node_times(
    gm: fx.GraphModule,
    inputs: tuple[Any, ...],
    repeats: int = 5,
    warmup: int = 2,
    threads: int | None = None,
    stat: str = "median",
) -> dict[str, float]:
    """Seconds of every node of `gm` over `repeats` runs on `inputs` after `warmup` ones: the median, or
    with `stat='min'` the least (what the op takes when nothing else on the machine disturbs it)."""
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        timed = _Timed(gm, device_sync(gm, inputs))
        with torch.inference_mode():
            for _ in range(warmup):
                timed.run(*inputs)
            timed.seconds = {name: [] for name in timed.seconds}
            for _ in range(repeats):
                timed.run(*inputs)
    finally:
        torch.set_num_threads(before)
    reduce = statistics.median if stat == "median" else min
    return {name: reduce(s) for name, s in timed.seconds.items() if s}


def op_times(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    tracer: str = "fx",
    leaf_modules: Sequence[str | type] = (),
    repeats: int = 5,
    warmup: int = 2,
    threads: int | None = None,
) -> dict[str, float]:
    """Median seconds of every op (fx node name -> seconds) over `repeats` forward passes on
    `example_inputs` after `warmup` unmeasured ones, with `threads` torch threads (default: as set)."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    gm = trace(model, inputs, tracer=tracer, leaf_modules=leaf_modules)
    return node_times(gm, inputs, repeats, warmup, threads)


def annotate_op_times(graph: ModelGraph, times: dict[str, float]) -> ModelGraph:
    """Set node attribute `seconds` on every op of `graph` from `op_times` of the same trace; returns
    the graph. Ops of the graph that `times` lacks mean the two come from different traces: an error."""
    missing = [n for n in graph.compute_nodes() if n not in times]
    if missing:
        raise GraphError(
            f"{len(missing)} op(s) of the graph have no measured time (e.g. {', '.join(missing[:3])}); "
            "measure op_times on the same model, inputs, tracer and leaf modules the graph was built from"
        )
    for n in graph.nx.nodes:
        if n in times:
            graph.nx.nodes[n]["seconds"] = float(times[n])
    return graph


def rescale_op_times(graph: ModelGraph, plan: PartitionPlan, stage_seconds: Sequence[float]) -> list[float]:
    """Calibrate the graph's op `seconds` to a run of `plan`: scale the ops of each part so they add up to
    the seconds that part was measured to take per call (e.g. `busy_s / calls` from the runtime); returns
    the factors. Parts running side by side on one machine slow each other down (shared caches and
    memory bandwidth), unevenly: ops on large feature maps suffer most. A split re-balanced on the
    calibrated times (`optimal_pipeline(graph, K, StageCost(measured=True))`) is balanced as it runs."""
    members = plan.members()
    if len(stage_seconds) != len(members):
        raise GraphError(f"{len(stage_seconds)} stage times for a plan of {len(members)} parts")
    compute = set(graph.compute_nodes())
    factors = []
    for nodes, measured in zip(members, stage_seconds, strict=True):
        nodes = [n for n in nodes if n in compute]
        missing = [n for n in nodes if "seconds" not in graph[n]]
        if missing:
            raise GraphError(f"op(s) {', '.join(missing[:3])} have no seconds; annotate_op_times first")
        predicted = sum(graph[n]["seconds"] for n in nodes)
        if not (measured > 0 and predicted > 0):
            raise GraphError(f"cannot scale a part predicted at {predicted} s to a measured {measured} s")
        factor = measured / predicted
        for n in nodes:
            graph.nx.nodes[n]["seconds"] *= factor
        factors.append(factor)
    return factors


@dataclass(frozen=True)
class PipelineTrial:
    """A pipeline plan as it ran (the `step`-th run of the tuning, from 0): seconds per call of each stage."""

    plan: PartitionPlan
    stage_seconds: tuple[float, ...]
    step: int = 0

    @property
    def bottleneck(self) -> float:
        return max(self.stage_seconds)

    @property
    def imbalance(self) -> float:
        """The slowest stage over the mean stage: 1.0 when balanced. Unlike absolute times, comparable
        between runs made at different moments of a shared machine (its stages ran at the same moment)."""
        return self.bottleneck * len(self.stage_seconds) / sum(self.stage_seconds)


def tune_pipeline(
    graph: ModelGraph,
    parts: int,
    run: Callable[[PartitionPlan], Sequence[float]],
    cost: StageCost | None = None,
    steps: int = 4,
) -> list[PipelineTrial]:
    """Refine the pipeline split of `graph` (op times annotated) by running it: `run(plan)` runs the plan
    and returns the seconds per call each stage took. Stages running side by side take longer than
    their ops' profiled times say, and unevenly, so after each run the profiled times of each stage are
    scaled to what it took (`rescale_op_times`, always from the profile: factors never compound) and the
    graph re-split (`optimal_pipeline` under `cost`, which must be `measured`). Where that split already
    ran (the rescaled times jump between two splits: the ops near a cut do not slow down like their
    stage's average), the split halfway in profiled time between the two best balanced runs runs next
    (`halfway_split`), so the cuts close in on the balance point. Stops when no new split is left, or after
    `steps` runs. Returns the trials, the best balanced first (least `imbalance`: on a shared machine
    absolute times drift between runs by more than nearby splits differ); the graph keeps its profiled
    op times."""
    cost = cost or StageCost(measured=True)
    if not cost.measured:
        raise InvalidPlanError("tune_pipeline balances measured op times: pass a StageCost(measured=True)")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    plan: PartitionPlan | None = optimal_pipeline(graph, parts, cost)  # also checks that every op has a time
    profiled = {n: graph[n]["seconds"] for n in graph.compute_nodes()}
    trials: list[PipelineTrial] = []
    try:
        while plan is not None and len(trials) < steps:
            seconds = tuple(float(s) for s in run(plan))
            trials.append(PipelineTrial(plan, seconds, len(trials)))
            rescale_op_times(graph, plan, seconds)
            plan = optimal_pipeline(graph, parts, cost)
            annotate_op_times(graph, profiled)
            if any(t.plan == plan for t in trials):
                best = sorted(trials, key=lambda t: t.imbalance)
                plan = halfway_split(graph, best[0].plan, best[1].plan) if len(best) > 1 else None
                if plan is not None and any(t.plan == plan for t in trials):
                    plan = None
    finally:
        annotate_op_times(graph, profiled)
    return sorted(trials, key=lambda t: t.imbalance)


def halfway_split(graph: ModelGraph, a: PartitionPlan, b: PartitionPlan) -> PartitionPlan | None:
    """The pipeline plan whose every cut lies halfway, in the graph's op `seconds`, between the cuts of
    pipeline plans `a` and `b` with as many parts (strictly between where they differ); None when the
    two are the same, their differing cuts are adjacent (nothing lies between), or the halfway cuts
    would not be in order."""
    ca, cb = a.cuts(graph), b.cuts(graph)
    if len(ca) != len(cb):
        raise InvalidPlanError(f"plans with {len(ca) + 1} and {len(cb) + 1} parts have no split between them")
    nodes = graph.compute_nodes()
    ends = [0.0]
    for n in nodes:
        ends.append(ends[-1] + float(graph[n]["seconds"]))  # ends[i]: profiled time before op i
    cuts = []
    for x, y in zip(ca, cb, strict=True):
        lo, hi = min(x, y), max(x, y)
        if hi - lo <= 1:  # the same cut, or adjacent ones: keep a's
            cuts.append(x)
            continue
        middle = (ends[lo] + ends[hi]) / 2
        cuts.append(min(range(lo + 1, hi), key=lambda i: (abs(ends[i] - middle), i)))
    if cuts == ca or cuts != sorted(set(cuts)):
        return None
    return PartitionPlan.pipeline(graph, cuts, a.devices)
