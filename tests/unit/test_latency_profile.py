"""Measured op times: one per op of the graph of the same trace; a DP split balanced by them."""

import pytest
import torch
from torch import nn

from decomp import GraphError, InvalidPlanError, build_graph
from decomp.partition import PartitionPlan, StageCost, optimal_pipeline, pipeline_stage_times
from decomp.partition.tune import halfway_split, rescale_op_times, tune_pipeline
from decomp.timing import _Timed, annotate_op_times, device_sync, op_times
from decomp.tracing import trace


class Slow(nn.Module):
    """Makes its input bigger in a way MACs do not see (an elementwise op on a large tensor)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(64, 64)
        self.second = nn.Linear(64, 64)

    def forward(self, x):
        h = self.first(x)
        for _ in range(30):  # 30 element-wise ops: no MACs, real time
            h = torch.tanh(h)
        return self.second(h)


def test_op_times_cover_every_op_and_annotate_the_graph():
    model, x = Slow().eval(), torch.randn(256, 64)
    graph = build_graph(model, x)
    times = op_times(model, x, repeats=3, warmup=1, threads=1)
    assert set(graph.compute_nodes()) <= set(times)
    assert all(t > 0 for t in times.values())
    annotate_op_times(graph, times)
    assert all(graph[n]["seconds"] == times[n] for n in graph.compute_nodes())
    with pytest.raises(GraphError, match="have no measured time"):
        annotate_op_times(graph, {})


def test_on_a_gpu_each_op_is_timed_between_device_syncs():
    model, x = Slow().eval(), torch.randn(8, 64)
    assert device_sync(model, (x,)) is None  # a CPU model: no sync, nothing added to its op times
    gm = trace(model, (x,))
    events: list[str] = []

    class Sync:  # stands in for torch.cuda.synchronize, recording when it is called
        def __call__(self) -> None:
            events.append("sync")

    class Recorded(_Timed):
        def call_function(self, target, args, kwargs):
            events.append("op")
            return super().call_function(target, args, kwargs)

    timed = Recorded(gm, Sync())
    with torch.inference_mode():
        timed.run(x)
    # every op's call lies between two syncs, so its time is the device's, not the launch's
    assert events.count("op") == 30 and "sync,op,sync" in ",".join(events)
    assert len(events) - events.count("op") == 2 * len(gm.graph.nodes)


def test_measured_cost_moves_the_cut_to_where_the_time_is():
    model, x = Slow().eval(), torch.randn(256, 64)
    graph = build_graph(model, x)
    by_macs = optimal_pipeline(graph, 2, StageCost(bytes_per_s=float("inf")))
    # the tanh chain has no MACs: balancing MACs puts one Linear on each side, the whole chain with one
    assert {graph[n]["kind"] for n in by_macs.members()[0]} & {"Linear"} == {"Linear"}
    with pytest.raises(InvalidPlanError, match="have no measured seconds"):
        optimal_pipeline(graph, 2, StageCost(measured=True))
    times = {n: 0.0 for n in graph.compute_nodes()}
    tanhs = [n for n in graph.compute_nodes() if graph[n]["kind"] == "tanh"]
    times.update({n: 1.0 for n in tanhs})  # times as a profile would see them, made exact for the test
    annotate_op_times(graph, times)
    cost = StageCost(bytes_per_s=float("inf"), measured=True)
    plan = optimal_pipeline(graph, 2, cost)
    assert pipeline_stage_times(graph, plan, cost) == [15.0, 15.0]  # the chain is cut in the middle
    assert plan.part_of()[tanhs[14]] == 0 and plan.part_of()[tanhs[15]] == 1


def test_rescaling_to_measured_stage_times_moves_the_cut():
    model, x = Slow().eval(), torch.randn(256, 64)
    graph = build_graph(model, x)
    tanhs = [n for n in graph.compute_nodes() if graph[n]["kind"] == "tanh"]
    annotate_op_times(graph, {n: (1.0 if n in tanhs else 0.0) for n in graph.compute_nodes()})
    cost = StageCost(bytes_per_s=float("inf"), measured=True)
    plan = optimal_pipeline(graph, 2, cost)
    # measured: the first stage ran twice as slow as predicted (15 -> 30 s), the second as predicted
    assert rescale_op_times(graph, plan, [30.0, 15.0]) == [2.0, 1.0]
    assert pipeline_stage_times(graph, plan, cost) == [30.0, 15.0]
    again = optimal_pipeline(graph, 2, cost)
    # 11 slow tanhs (22 s) | 4 slow + 15 fast ones (23 s): the cut moves 4 ops earlier
    assert again.part_of()[tanhs[10]] == 0 and again.part_of()[tanhs[11]] == 1
    assert pipeline_stage_times(graph, again, cost) == [22.0, 23.0]
    with pytest.raises(GraphError, match="2 stage times for a plan of 1 parts|1 stage times for a plan of 2"):
        rescale_op_times(graph, plan, [1.0])


def test_tuning_a_pipeline_by_running_it_finds_the_split_balanced_as_it_runs():
    model, x = Slow().eval(), torch.randn(256, 64)
    graph = build_graph(model, x)
    tanhs = [n for n in graph.compute_nodes() if graph[n]["kind"] == "tanh"]
    profile = {n: (1.0 if n in tanhs else 0.0) for n in graph.compute_nodes()}
    annotate_op_times(graph, profile)
    cost = StageCost(bytes_per_s=float("inf"), measured=True)
    ran = []

    def run(plan):  # as it runs, every op of the first stage takes 1.5x its profiled time: best is 12 | 18 tanhs
        ran.append(plan)
        part = plan.part_of()
        return [sum(1.5 if k == 0 else 1.0 for t in tanhs if part[t] == k) for k in range(2)]

    trials = tune_pipeline(graph, 2, run, cost, steps=4)
    best = trials[0]
    assert [best.plan.part_of()[t] for t in tanhs] == [0] * 12 + [1] * 18
    assert best.stage_seconds == (18.0, 18.0) and best.bottleneck == 18.0 and best.imbalance == 1.0
    assert ran[0] == optimal_pipeline(graph, 2, cost)  # starts from the profiled split (15 | 15: 22.5 s, 15 s)
    assert len(set(ran)) == len(ran) == len(trials) <= 4  # stops once a split comes back
    assert [t.imbalance for t in trials] == sorted(t.imbalance for t in trials)
    assert [t.plan for t in sorted(trials, key=lambda t: t.step)] == ran
    assert {n: graph[n]["seconds"] for n in graph.compute_nodes()} == profile  # the profile is left as it was
    assert len(tune_pipeline(graph, 2, run, cost, steps=1)) == 1
    with pytest.raises(InvalidPlanError, match="StageCost\\(measured=True\\)"):
        tune_pipeline(graph, 2, run, StageCost())


def _tanh_graph():
    """The Slow model's graph with every tanh profiled at 1 s (and nothing else taking time)."""
    model, x = Slow().eval(), torch.randn(256, 64)
    graph = build_graph(model, x)
    tanhs = [n for n in graph.compute_nodes() if graph[n]["kind"] == "tanh"]
    annotate_op_times(graph, {n: (1.0 if n in tanhs else 0.0) for n in graph.compute_nodes()})
    return graph, tanhs


def test_tuning_bisects_where_rescaled_times_jump_between_two_splits():
    graph, tanhs = _tanh_graph()
    cost = StageCost(bytes_per_s=float("inf"), measured=True)
    true = [1.0] * 10 + [3.0] * 5 + [1.0] * 15  # as it runs, tanhs 10..14 take 3x their profile: 40 s in all
    ran = []

    def run(plan):
        part = plan.part_of()
        ran.append(sum(part[t] == 0 for t in tanhs))
        return [sum(c for t, c in zip(tanhs, true, strict=True) if part[t] == k) for k in range(2)]

    trials = tune_pipeline(graph, 2, run, cost, steps=6)
    # 15 tanhs first (25 | 15 s); rescaled, 12 (16 | 24); rescaled again, 15 came back: the rescale-only loop
    # stopped there and kept 12 (bottleneck 24 s). Halfway between the two in profiled time: 13, the optimum
    assert ran[:3] == [15, 12, 13]
    assert trials[0].stage_seconds == (19.0, 21.0) and sum(trials[0].plan.part_of()[t] == 0 for t in tanhs) == 13
    assert len(set(ran)) == len(ran) <= 6  # every split ran once; it stops when nothing new is left


def test_halfway_split_lies_between_two_pipeline_splits_in_profiled_time():
    graph, tanhs = _tanh_graph()
    nodes = graph.compute_nodes()
    at = [nodes.index(t) for t in tanhs]
    a, b = PartitionPlan.pipeline(graph, [at[4]]), PartitionPlan.pipeline(graph, [at[12]])
    assert halfway_split(graph, a, b).cuts(graph) == [at[8]] == halfway_split(graph, b, a).cuts(graph)
    assert halfway_split(graph, a, PartitionPlan.pipeline(graph, [at[5]])) is None  # adjacent: nothing between
    assert halfway_split(graph, a, a) is None
    # more parts: each cut moves halfway; a cut the two share stays
    c, d = PartitionPlan.pipeline(graph, [at[2], at[20]]), PartitionPlan.pipeline(graph, [at[10], at[20]])
    assert halfway_split(graph, c, d).cuts(graph) == [at[6], at[20]]
    with pytest.raises(InvalidPlanError, match="plans with 2 and 3 parts"):
        halfway_split(graph, a, c)
