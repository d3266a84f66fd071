"""Pipeline splits balanced on measured op times, tuned by running them.

Parts running side by side on one machine slow each other down (shared caches and memory bandwidth),
unevenly: ops on large feature maps suffer most. `rescale_op_times` scales a graph's profiled op
`seconds` (`decomp.timing.annotate_op_times`) to what each part of a run took; `tune_pipeline` runs a
split, rescales, re-splits (`optimal_pipeline` on `StageCost(measured=True)`) and repeats, closing in on
a split that is balanced as it runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from decomp.errors import GraphError, InvalidPlanError
from decomp.graph import ModelGraph
from decomp.partition.baselines import StageCost, optimal_pipeline
from decomp.partition.plan import PartitionPlan
from decomp.timing import annotate_op_times

__all__ = ["PipelineTrial", "halfway_split", "rescale_op_times", "tune_pipeline"]


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
