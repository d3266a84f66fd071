"""Baseline splits: the pipeline DP against brute force on random DAGs, its tie rule and cost function, and
the DAG graph partition's validity, balance and determinism."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

from decomp import InvalidPlanError, ModelGraph, build_graph
from decomp.coarsen import coarsen
from decomp.partition import baselines
from decomp.partition.baselines import StageCost, graph_partition, optimal_pipeline, pipeline_stage_times
from decomp.partition.metrics import partition_metrics
from decomp.partition.plan import PartitionPlan, expand
from tests.tiny_models import TinyNet
from tests.unit.test_partition_metrics import make_graph


def random_dag(seed: int) -> ModelGraph:
    """6-12 compute nodes, each reading 1-3 earlier nodes or the input, with random MACs and bytes."""
    rng = random.Random(seed)
    n = rng.randint(6, 12)
    names = ["x", *(f"n{i}" for i in range(n))]
    nodes = {name: (rng.randint(0, 20), rng.randint(1, 30)) for name in names}
    edges = {(rng.choice(names[:i]), names[i]) for i in range(1, n + 1) for _ in range(rng.randint(1, 3))}
    return make_graph(nodes, sorted(edges))


def brute_force(graph: ModelGraph, parts: int, cost: StageCost) -> tuple[float, int]:
    """(least bottleneck, least total bytes received among splits with that bottleneck), from sets."""
    nodes = graph.compute_nodes()

    def stage(i: int, j: int) -> tuple[float, int]:
        inside = set(nodes[i:j])
        tensors = {u for v in inside for u in graph.nx.predecessors(v) if u not in inside}
        received = sum(graph[u]["out_bytes"] for u in tensors)
        return cost.time(sum(graph[v]["macs"] for v in inside), received), received

    best: tuple[float, int] | None = None
    for cuts in itertools.combinations(range(1, len(nodes)), parts - 1):
        bounds = [0, *cuts, len(nodes)]
        stages = [stage(a, b) for a, b in itertools.pairwise(bounds)]
        score = (max(t for t, _ in stages), sum(r for _, r in stages))
        best = score if best is None else min(best, score)
    return best


COSTS = [StageCost(1.0, 2.0, 0.5), StageCost(1.0, 0.25), StageCost(3.0, 7.0, 0.1)]


@pytest.mark.parametrize("seed", range(30))
def test_dp_equals_brute_force(seed):
    graph = random_dag(seed)
    cost = COSTS[seed % len(COSTS)]
    for parts in range(2, 5):
        plan = optimal_pipeline(graph, parts, cost)
        assert plan.mode == "pipeline" and plan.parts == parts
        times = pipeline_stage_times(graph, plan, cost)
        bottleneck, received = brute_force(graph, parts, cost)
        assert max(times) == bottleneck
        assert partition_metrics(graph, plan).comm_bytes == received


def test_ties_go_to_the_split_sending_less():
    # a and c cost the same, b nothing: cutting before b or before c balances compute equally, but a's
    # output is ten times b's
    graph = make_graph({"x": (0, 1), "a": (2, 100), "b": (0, 10), "c": (2, 5)}, [("x", "a"), ("a", "b"), ("b", "c")])
    free_links = StageCost(macs_per_s=1.0, bytes_per_s=float("inf"))
    assert optimal_pipeline(graph, 2, free_links).cuts(graph) == [2]
    assert pipeline_stage_times(graph, PartitionPlan.pipeline(graph, [1]), free_links) == [2.0, 2.0]


def test_stage_time_counts_compute_bytes_and_overhead():
    graph = make_graph({"x": (0, 8), "a": (10, 4), "b": (6, 2)}, [("x", "a"), ("a", "b"), ("x", "b")])
    cost = StageCost(macs_per_s=2.0, bytes_per_s=4.0, overhead_s=1.0)
    plan = PartitionPlan.pipeline(graph, [1])
    assert pipeline_stage_times(graph, plan, cost) == [10 / 2 + 8 / 4 + 1, 6 / 2 + (4 + 8) / 4 + 1]
    assert optimal_pipeline(graph, 1, cost).parts == 1


def test_bad_inputs_are_rejected():
    graph = random_dag(0)
    n = len(graph.compute_nodes())
    with pytest.raises(InvalidPlanError, match=f"cannot split {n} compute node"):
        optimal_pipeline(graph, n + 1)
    with pytest.raises(InvalidPlanError, match="into 0 part"):
        optimal_pipeline(graph, 0)
    with pytest.raises(InvalidPlanError, match="into 0 part"):
        graph_partition(graph, 0)
    with pytest.raises(InvalidPlanError, match="rates must be > 0"):
        StageCost(macs_per_s=0)
    with pytest.raises(InvalidPlanError, match="overhead_s"):
        StageCost(overhead_s=-1)
    with pytest.raises(InvalidPlanError, match="unknown graph partition method 'spectral'"):
        graph_partition(graph, 2, method="spectral")
    with pytest.raises(InvalidPlanError, match="imbalance"):
        graph_partition(graph, 2, imbalance=1.5)


def test_pipeline_on_a_block_graph_expands_to_the_op_graph():
    ops = build_graph(TinyNet().eval(), torch.randn(1, 3, 8, 8))
    blocks = coarsen(ops, depth=1)
    plan = optimal_pipeline(blocks, 3)
    op_plan = expand(plan, blocks).validate(ops)
    assert op_plan.parts == 3
    assert pipeline_stage_times(blocks, plan) == pipeline_stage_times(ops, op_plan)


class FourBranches(nn.Module):
    """A stem, four parallel conv chains of different widths, concatenated, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 8, 3, padding=1))
            for c in (4, 8, 8, 12)
        )
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.cat([branch(x) for branch in self.branches], dim=1))


@pytest.fixture(scope="module")
def branching():
    return build_graph(FourBranches().eval(), torch.randn(1, 3, 8, 8))


def methods() -> list:
    return ["kl", pytest.param("metis", marks=pytest.mark.skipif(not baselines._has_pymetis(), reason="no pymetis"))]


@pytest.mark.parametrize("method", methods())
@pytest.mark.parametrize("parts", [2, 4])
def test_graph_partition_is_valid_balanced_and_seeded(branching, method, parts):
    plan = graph_partition(branching, parts, method=method, seed=3)
    assert plan.mode == "dag" and plan.parts == parts
    plan.validate(branching)
    m = partition_metrics(branching, plan)
    assert m.balance < 1.5
    assert graph_partition(branching, parts, method=method, seed=3) == plan


@pytest.mark.parametrize("method", methods())
def test_graph_partition_finds_the_split_no_pipeline_can(method):
    # two chains traced interleaved (a1 b1 a2 b2 a3 b3) then joined: any contiguous cut crosses both
    # chains' heavy tensors; keeping each chain whole sends only a3's small output
    nodes = {"x": (0, 1), "a1": (10, 100), "b1": (10, 100), "a2": (10, 100), "b2": (10, 100)}
    nodes |= {"a3": (10, 10), "b3": (10, 10), "join": (1, 1)}
    edges = [("x", "a1"), ("x", "b1"), ("a1", "a2"), ("b1", "b2"), ("a2", "a3"), ("b2", "b3")]
    graph = make_graph(nodes, [*edges, ("a3", "join"), ("b3", "join")])
    dag = partition_metrics(graph, graph_partition(graph, 2, method=method))
    pipeline = partition_metrics(graph, optimal_pipeline(graph, 2))
    assert dag.cut_bytes == 10 and pipeline.cut_bytes >= 2 * 10
    assert dag.balance == pytest.approx(31 / 30.5)


def test_auto_falls_back_to_kl_without_pymetis(branching, monkeypatch):
    monkeypatch.setattr(baselines, "_has_pymetis", lambda: False)
    assert graph_partition(branching, 3) == graph_partition(branching, 3, method="kl")


def test_parts_emptied_by_repair_are_refilled(branching, monkeypatch):
    monkeypatch.setattr(baselines, "_kl", lambda macs, *_: [0] * len(macs))  # a partitioner that gives up
    plan = graph_partition(branching, 3, method="kl")
    assert plan.parts == 3
    plan.validate(branching)
    assert partition_metrics(branching, plan).balance < 2.0
