"""Coarsening: blocks sum their ops' costs, stay acyclic, and honour depth and target count."""

import networkx as nx
import pytest
import torch

from decomp import GraphError, build_graph
from decomp.coarsen import coarsen, max_depth
from tests.tiny_models import TinyNet


@pytest.fixture(scope="module")
def graph():
    return build_graph(TinyNet().eval(), torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("depth", [1, 2])
def test_depth_blocks_sum_costs_and_stay_acyclic(graph, depth):
    blocks = coarsen(graph, depth=depth)
    assert nx.is_directed_acyclic_graph(blocks.nx)
    assert blocks.sum("params") == graph.totals.params
    assert blocks.sum("macs") == graph.totals.macs
    assert blocks.totals == graph.totals
    members = [m for n in blocks for m in blocks[n]["members"]]
    assert sorted(members) == sorted(graph.nx.nodes)  # every op in exactly one block
    assert set(blocks.nx.graph["block_of"]) == set(graph.nx.nodes)


def test_depth_one_groups_by_top_module(graph):
    blocks = coarsen(graph, depth=1)
    assert blocks["branches"]["members"] == ["branches_left", "branches_right", "cat"]
    assert blocks["branches"]["macs"] == graph["branches_left"]["macs"] + graph["branches_right"]["macs"]
    assert blocks.nx.has_edge("x", "stem") and blocks.nx.has_edge("fc", "output")


def test_depth_two_splits_parallel_branches(graph):
    blocks = coarsen(graph, depth=2)
    assert blocks.nx.has_edge("branches.left", "branches") and blocks.nx.has_edge("branches.right", "branches")
    assert not nx.has_path(blocks.nx, "branches.left", "branches.right")  # they can run side by side


def test_block_edge_counts_a_tensor_once(graph):
    blocks = coarsen(graph, depth=2)
    # the add output feeds both branches: one tensor to each receiving block, sent once from its block
    add_block = blocks.nx.graph["block_of"]["add"]
    assert blocks.nx.edges[add_block, "branches.left"]["bytes"] == graph["add"]["out_bytes"]
    assert blocks[add_block]["out_bytes"] == graph["add"]["out_bytes"]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_target_block_count(graph, count):
    blocks = coarsen(graph, blocks=count)
    assert len(blocks.compute_nodes()) == count
    assert nx.is_directed_acyclic_graph(blocks.nx)
    assert blocks.sum("macs") == graph.totals.macs


def test_bad_arguments_are_named(graph):
    with pytest.raises(GraphError, match="exactly one"):
        coarsen(graph)
    with pytest.raises(GraphError, match="depth must be >= 1, got 0"):
        coarsen(graph, depth=0)
    with pytest.raises(GraphError, match="coarsen an op-level graph"):
        coarsen(coarsen(graph, depth=1), depth=1)
    assert max_depth(graph) == 2
