"""Partition metrics: exact per-part costs, peak memory and transfers on hand-computable graphs, and the
invariants that tie them to the graph's totals on traced models and their block graphs."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch
from torch import nn

from decomp import InvalidPlanError, ModelGraph, build_graph
from decomp.coarsen import coarsen
from decomp.partition.metrics import partition_metrics
from decomp.partition.plan import PartitionPlan, expand, quotient
from tests.tiny_models import TinyNet


def make_graph(
    nodes: dict[str, tuple[int, int]], edges: list[tuple[str, str]], batch: int = 1, param_bytes: dict | None = None
) -> ModelGraph:
    """A ModelGraph by hand: `nodes` maps name -> (macs, out_bytes) in topological order, the first being the
    input; every edge carries its producer's out_bytes and the last node feeds the output."""
    names = list(nodes)
    g = nx.DiGraph(name="hand", level="op", inputs=[{"name": names[0], "shape": [batch, 8], "dtype": "float32"}])
    for i, name in enumerate([*names, "output"]):
        op = "placeholder" if i == 0 else "output" if name == "output" else "call_function"
        macs, out = nodes.get(name, (0, 0))
        size = (param_bytes or {}).get(name, 0)
        g.add_node(name, op=op, kind=op, index=i, out_bytes=out, macs=macs, params=size // 4, param_bytes=size)
    for u, v in [*edges, (names[-1], "output")]:
        g.add_edge(u, v, tensor=u, bytes=g.nodes[u]["out_bytes"])
    g.graph["totals"] = {
        "params": sum(d["params"] for _, d in g.nodes(data=True)),
        "macs": sum(d["macs"] for _, d in g.nodes(data=True)),
        "activation_bytes": sum(out for _, out in list(nodes.values())[1:]),
    }
    return ModelGraph(g)


@pytest.fixture()
def hand():
    """x -> a -> {b, c} -> d -> e, plus a -> e; batch 4."""
    nodes = {"x": (0, 100), "a": (5, 10), "b": (3, 20), "c": (2, 30), "d": (4, 40), "e": (6, 70)}
    edges = [("x", "a"), ("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e"), ("a", "e")]
    return make_graph(nodes, edges, batch=4, param_bytes={"a": 7, "d": 12})


def test_hand_example_exact(hand):
    plan = PartitionPlan.from_assignment({"a": 0, "b": 1, "c": 1, "d": 2, "e": 2}, graph=hand)
    m = partition_metrics(hand, plan)
    p0, p1, p2 = m.parts
    assert (p0.macs, p1.macs, p2.macs) == (5, 5, 10)
    assert (p0.activation_bytes, p1.activation_bytes, p2.activation_bytes) == (10, 50, 110)
    assert (p0.param_bytes, p2.param_bytes) == (7, 12)
    # a is read by b and c in part 1: sent there once; read by parts 1 and 2: sent twice in all
    assert [p.received_bytes for p in m.parts] == [100, 10, 10 + 20 + 30]
    assert [p.sent_bytes for p in m.parts] == [20, 50, 0]
    assert [p.output_bytes for p in m.parts] == [0, 0, 70]
    assert m.transfers == ((0, 1, 10), (0, 2, 10), (1, 2, 50))
    assert (m.cut_bytes, m.input_bytes, m.comm_bytes, m.batch) == (70, 100, 170, 4)
    assert m.cut_bytes_per_sample == 17.5 and m.comm_bytes_per_sample == 42.5
    assert m.balance == pytest.approx(10 / (20 / 3))


def test_peak_memory_exact(hand):
    plan = PartitionPlan.from_assignment({"a": 0, "b": 1, "c": 1, "d": 2, "e": 2}, graph=hand)
    m = partition_metrics(hand, plan)
    # part 0: x (100) live while a (10) runs, then x is freed
    # part 1: a (10) received; b (20) kept for part 2; c (30) runs with a, b live: 10 + 20 + 30
    # part 2: a, b, c received (60); d runs: 100; b, c freed; e (70) runs with a and d live: 10 + 40 + 70
    assert [p.peak_bytes for p in m.parts] == [7 + 110, 60, 12 + 120]


def test_peak_memory_frees_after_last_local_reader():
    nodes = {"x": (0, 1), "a": (0, 50), "b": (0, 5), "c": (0, 5), "d": (0, 48)}
    g = make_graph(nodes, [("x", "a"), ("a", "b"), ("b", "c"), ("c", "d")])
    m = partition_metrics(g, PartitionPlan.from_assignment(dict.fromkeys("abcd", 0), graph=g))
    assert m.parts[0].peak_bytes == 50 + 5  # while b runs; a is gone before d (48) runs beside c (5)
    assert m.cut_bytes == 0 and m.input_bytes == 1 and m.balance == 1.0


def test_to_json_is_plain_data(hand):
    plan = PartitionPlan.pipeline(hand, [2])
    data = json.loads(json.dumps(partition_metrics(hand, plan).to_json()))
    assert [p["part"] for p in data["parts"]] == [0, 1]
    assert data["cut_bytes"] == 10 + 20  # part 1 = c, d, e reads a (in c and e: once) and b
    assert data["comm_bytes_per_sample"] == (data["cut_bytes"] + 100) / 4


def test_invalid_plans_are_rejected(hand):
    cycle = PartitionPlan.from_assignment({"a": 0, "b": 1, "c": 0, "d": 0, "e": 0}, graph=hand)
    with pytest.raises(InvalidPlanError, match="cycle"):
        partition_metrics(hand, cycle)
    with pytest.raises(InvalidPlanError, match="no part"):
        partition_metrics(hand, PartitionPlan.from_assignment({"a": 0, "b": 0}))
    with pytest.raises(InvalidPlanError, match="batch"):
        partition_metrics(hand, PartitionPlan.pipeline(hand, [1]), batch=0)


class Chunky(nn.Module):
    """A linear whose output is chunked in two: each item is a tensor of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 8)

    def forward(self, x):
        a, b = torch.chunk(self.lin(x), 2, dim=1)
        return a * b


def test_items_of_a_multi_output_op_each_cross():
    graph = build_graph(Chunky().eval(), torch.randn(2, 4))
    nodes = graph.compute_nodes()
    chunk = next(n for n in nodes if graph[n]["kind"] == "chunk")
    plan = PartitionPlan.pipeline(graph, [nodes.index(chunk) + 1])
    m = partition_metrics(graph, plan)
    assert m.cut_bytes == graph[chunk]["out_bytes"] == 2 * 8 * 4  # both halves, not one
    assert quotient(graph, plan).edges[0, 1]["bytes"] == m.cut_bytes
    assert m.batch == 2 and m.cut_bytes_per_sample == 32


@pytest.fixture(scope="module")
def tiny():
    return build_graph(TinyNet().eval(), torch.randn(1, 3, 8, 8))


def test_traced_model_invariants(tiny):
    nodes = tiny.compute_nodes()
    plan = PartitionPlan.from_assignment({n: int(i * 3 / len(nodes)) for i, n in enumerate(nodes)}, graph=tiny)
    m = partition_metrics(tiny, plan)
    assert m.macs == tiny.totals.macs
    assert sum(p.params for p in m.parts) == tiny.totals.params
    assert sum(p.activation_bytes for p in m.parts) == tiny.totals.activation_bytes
    assert sum(p.received_bytes for p in m.parts) == m.cut_bytes + m.input_bytes
    assert sum(p.sent_bytes for p in m.parts) == m.cut_bytes == sum(b for _, _, b in m.transfers)
    assert m.cut_bytes == sum(d["bytes"] for _, _, d in quotient(tiny, plan).edges(data=True))
    assert m.input_bytes == tiny["x"]["out_bytes"] and m.output_bytes == tiny["fc"]["out_bytes"]
    for p in m.parts:
        live_at_most = p.received_bytes + p.activation_bytes
        assert p.param_bytes + p.received_bytes <= p.peak_bytes <= p.param_bytes + live_at_most


@pytest.mark.parametrize("cuts", [[3], [2, 5]])
def test_block_graph_matches_its_op_graph(tiny, cuts):
    blocks = coarsen(tiny, depth=1)
    plan = PartitionPlan.pipeline(blocks, cuts)
    on_blocks, on_ops = partition_metrics(blocks, plan), partition_metrics(tiny, expand(plan, blocks))
    assert [p.macs for p in on_blocks.parts] == [p.macs for p in on_ops.parts]
    assert [p.activation_bytes for p in on_blocks.parts] == [p.activation_bytes for p in on_ops.parts]
    assert on_blocks.transfers == on_ops.transfers and on_blocks.input_bytes == on_ops.input_bytes
    # a block counts all its members' outputs as live while it runs: never below the op-level peak
    assert all(b.peak_bytes >= o.peak_bytes for b, o in zip(on_blocks.parts, on_ops.parts, strict=True))
