"""PartitionPlan: construction, JSON round trip, validation errors, repair, expand, quotient bytes."""

from __future__ import annotations

import random

import networkx as nx
import pytest
import torch

from decomp import InvalidPlanError, build_graph
from decomp.coarsen import coarsen
from decomp.partition import PartitionPlan, expand, quotient, repair
from tests.tiny_models import TinyNet


@pytest.fixture(scope="module")
def graph():
    return build_graph(TinyNet(), torch.randn(1, 3, 8, 8))


def test_pipeline_plan_cuts_and_json_round_trip(graph):
    nodes = graph.compute_nodes()
    plan = PartitionPlan.pipeline(graph, [3, nodes[7]], devices=("cpu", "cuda:0", "cuda:1")).validate(graph)
    assert plan.parts == 3 and plan.cuts(graph) == [3, 7]
    assert [len(m) for m in plan.members()] == [3, 4, len(nodes) - 7]
    again = PartitionPlan.loads(plan.dumps())
    assert again == plan and again.mode == "pipeline" and again.devices == ("cpu", "cuda:0", "cuda:1")


def test_dag_plan_puts_parallel_branches_side_by_side(graph):
    part = dict.fromkeys(graph.compute_nodes(), 0)
    right = [n for n in part if graph[n]["module"] == "branches.right"]
    part.update(dict.fromkeys(right, 1))  # only the right branch on part 1: it reads and feeds part 0
    tail = graph.compute_nodes()[graph.compute_nodes().index("cat") :]
    part.update(dict.fromkeys(tail, 2))
    plan = PartitionPlan.from_assignment(part, graph=graph).validate(graph)
    q = quotient(graph, plan)
    assert sorted(q.edges) == [(0, 1), (0, 2), (1, 2)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a | {"nonexistent": 0}, "no compute node"),
        (lambda a: {n: p for n, p in a.items() if n != "fc"}, "have no part"),
        (lambda a: a | {"x": 0}, "no compute node"),  # the input placeholder is not a compute node
    ],
)
def test_validate_names_unknown_and_missing_nodes(graph, change, message):
    assignment = dict.fromkeys(graph.compute_nodes(), 0)
    with pytest.raises(InvalidPlanError, match=message):
        PartitionPlan(tuple(change(assignment).items())).validate(graph)


def test_cycle_is_named_and_repair_fixes_it(graph):
    nodes = graph.compute_nodes()
    assignment = {n: (1 if 2 <= i < 5 else 0) for i, n in enumerate(nodes)}  # part 0 -> 1 -> 0
    with pytest.raises(InvalidPlanError, match=r"cycle \(0 -> 1 -> 0\).*repair"):
        PartitionPlan.from_assignment(assignment, graph=graph).validate(graph)
    fixed = repair(graph, assignment)
    assert nx.is_directed_acyclic_graph(quotient(graph, fixed)) and fixed.parts == 2
    part = fixed.part_of()
    # the nearest fix moves the two nodes before the detour (stem, bn) into it: 2 moves, both parts kept
    assert [part[n] for n in nodes] == [0] * 5 + [1] * (len(nodes) - 5)


def test_repair_keeps_a_valid_plan_and_makes_pipelines_contiguous(graph):
    plan = PartitionPlan.pipeline(graph, [4, 9])
    assert repair(graph, plan.part_of(), "pipeline") == plan
    rng = random.Random(0)
    for _ in range(20):
        assignment = {n: rng.randrange(4) for n in graph.compute_nodes()}
        for mode in ("dag", "pipeline"):
            fixed = repair(graph, assignment, mode)  # validates itself
            assert fixed.mode == mode and 1 <= fixed.parts <= 4


def test_pipeline_mode_rejects_a_part_that_resumes(graph):
    nodes = graph.compute_nodes()
    bad = tuple((n, 1 if 5 <= i < 8 else 0) for i, n in enumerate(nodes))  # part 0 resumes after part 1
    with pytest.raises(InvalidPlanError, match="contiguous runs"):
        PartitionPlan(bad, "pipeline").validate(graph)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda g: PartitionPlan((("a", 0), ("b", 2))), "numbered 0..K-1"),
        (lambda g: PartitionPlan((("a", 0), ("a", 0))), "more than once"),
        (lambda g: PartitionPlan((("a", 0),), mode="ring"), "unknown partition mode"),
        (lambda g: PartitionPlan((("a", 0), ("b", 1)), devices=("cpu",)), "one per part"),
        (lambda g: PartitionPlan.pipeline(g, [0]), "outside 1.."),
        (lambda g: PartitionPlan.pipeline(g, [5, 3]), "increasing"),
        (lambda g: PartitionPlan.pipeline(g, ["nope"]), "no compute node of that name"),
        (
            lambda g: PartitionPlan.from_json({"format": "decomp.partition_plan/1", "assignment": {}, "cuts": []}),
            "cuts",
        ),
        (lambda g: PartitionPlan.from_json({"format": "decomp.pruning_plan/1"}), "not a partition plan"),
    ],
)
def test_bad_plans_get_clear_errors(graph, build, message):
    with pytest.raises(InvalidPlanError, match=message):
        build(graph)


def test_quotient_counts_a_tensor_once_per_receiving_part(graph):
    nodes = graph.compute_nodes()
    relu = next(n for n in nodes if graph[n]["kind"] == "relu")
    readers = sorted(graph.nx.successors(relu), key=nodes.index)
    assert len(readers) >= 2  # the residual: dw and add both read relu's output
    first = nodes.index(readers[0])
    one = {n: (0 if i < first else 1) for i, n in enumerate(nodes)}
    q = quotient(graph, PartitionPlan.from_assignment(one, graph=graph))
    crossing = {u for u, v in graph.nx.edges if u in one and v in one and one[u] == 0 and one[v] == 1}
    assert q.edges[0, 1]["bytes"] == sum(graph[u]["out_bytes"] for u in crossing)  # relu counted once, not twice


def test_expand_maps_a_block_plan_onto_ops(graph):
    blocks = coarsen(graph, blocks=4)
    plan = PartitionPlan.pipeline(blocks, [2])
    ops = expand(plan, blocks).validate(graph)
    assert ops.parts == 2 and len(ops.assignment) == len(graph.compute_nodes())
    with pytest.raises(InvalidPlanError, match="block graph"):
        expand(plan, graph)
