"""Measured op times: one per op of the graph of the same trace; a DP split balanced by them."""

import pytest
import torch
from torch import nn

from decomp import GraphError, InvalidPlanError, build_graph
from decomp.latency import annotate_op_times, op_times, rescale_op_times, tune_pipeline
from decomp.latency.profile import _Timed, device_sync
from decomp.partition import StageCost, optimal_pipeline, pipeline_stage_times
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
