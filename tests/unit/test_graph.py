"""The costed graph of tiny models: exact params and MACs, edge bytes, JSON round trip."""

import json

import networkx as nx
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from decomp import GraphError, ModelGraph, build_graph
from tests.tiny_models import AttentionNet, TiedNet, TinyNet, tiny_macs


@pytest.fixture(scope="module")
def tiny_graph():
    torch.manual_seed(0)
    return build_graph(TinyNet().eval(), torch.randn(1, 3, 8, 8))


def test_params_and_macs_match_hand_count(tiny_graph):
    model = TinyNet()
    assert tiny_graph.totals.params == sum(p.numel() for p in model.parameters())
    assert tiny_graph.totals.macs == tiny_macs()
    assert tiny_graph["stem"]["macs"] == 8 * 8 * 8 * 3 * 9
    assert tiny_graph["dw"]["macs"] == 8 * 8 * 8 * 9  # depthwise: one input channel per output
    assert tiny_graph["bn"]["params"] == 16 and tiny_graph["bn"]["macs"] == 0


def test_nodes_follow_schema(tiny_graph):
    cat = next(n for n in tiny_graph if tiny_graph[n]["kind"] == "cat")
    assert tiny_graph[cat]["module"] == "branches"
    assert tiny_graph[cat]["shape"] == [1, 16, 8, 8]
    assert tiny_graph[cat]["out_bytes"] == 16 * 8 * 8 * 4
    assert tiny_graph["fc"]["kind"] == "Linear" and tiny_graph["fc"]["dtype"] == "float32"
    assert tiny_graph.order()[0] == "x" and tiny_graph.order()[-1] == "output"
    # the residual add reads the relu output and the depthwise conv output
    add = next(n for n in tiny_graph if tiny_graph[n]["kind"] == "add")
    assert set(tiny_graph.nx.predecessors(add)) == {"relu", "dw"}


def test_edges_carry_producer_bytes(tiny_graph):
    for u, _, data in tiny_graph.nx.edges(data=True):
        assert data["tensor"] == u
        assert data["bytes"] == tiny_graph[u]["out_bytes"]
    assert tiny_graph.nx.edges["x", "stem"]["bytes"] == 3 * 8 * 8 * 4


def test_totals_are_sums_of_nodes(tiny_graph):
    totals = tiny_graph.totals
    assert totals.params == tiny_graph.sum("params")
    assert totals.macs == tiny_graph.sum("macs")
    inner = [d["out_bytes"] for _, d in tiny_graph.nx.nodes(data=True) if d["op"] not in ("placeholder", "output")]
    assert totals.activation_bytes == sum(inner) > 0


def test_json_round_trip(tiny_graph, tmp_path):
    path = tmp_path / "g.json"
    tiny_graph.save(path)
    data = json.loads(path.read_text())
    assert data["totals"] == {
        "params": tiny_graph.totals.params,
        "macs": tiny_macs(),
        "activation_bytes": tiny_graph.totals.activation_bytes,
    }
    again = ModelGraph.load(path)
    assert nx.utils.graphs_equal(again.nx, tiny_graph.nx)
    assert again.totals == tiny_graph.totals


def test_json_from_another_schema_version_is_refused(tiny_graph):
    data = tiny_graph.to_json()
    data["schema_version"] = 99
    with pytest.raises(GraphError, match="schema_version 99"):
        ModelGraph.from_json(data)


def test_shared_weight_counted_once_and_bare_parameters_folded_into_their_op():
    model = TiedNet().eval()
    graph = build_graph(model, torch.randint(0, 20, (2, 5)))
    assert graph.totals.params == sum(p.numel() for p in model.parameters()) == 20 * 6 + 36
    linear = next(n for n in graph if graph[n]["kind"] == "linear")
    assert graph[linear]["params"] == 36  # the bare `mix` parameter, read through get_attr
    assert graph[linear]["macs"] == 2 * 5 * 6 * 6
    assert graph["head"]["params"] == 0  # its weight is the embedding's, counted there
    assert graph["head"]["macs"] == 2 * 5 * 6 * 20
    assert not any(graph[n]["op"] == "get_attr" for n in graph)


def test_attention_macs_agree_with_torch_flop_counter():
    model = AttentionNet().eval()
    x = torch.randn(2, 7, 16)
    graph = build_graph(model, x)
    # with grad enabled MHA skips its fused inference kernel, which the counter cannot see into
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    assert graph.totals.macs == counter.get_total_flops() // 2
    assert graph.totals.macs == 2 * 7 * (16 * 48 + 16 * 16 + 16 * 3) + 2 * 7 * 7 * 16 * 2
    assert graph["attn"]["kind"] == "MultiheadAttention"


def test_export_tracer_gives_same_totals_as_fx():
    model = TinyNet().eval()
    x = torch.randn(1, 3, 8, 8)
    fx_graph = build_graph(model, x, tracer="fx")
    export_graph = build_graph(model, x, tracer="export")
    assert export_graph.totals.params == fx_graph.totals.params
    assert export_graph.totals.macs == fx_graph.totals.macs
    assert export_graph.nx.graph["tracer"] == "export"
    modules = {export_graph[n]["module"] for n in export_graph}
    assert {"stem", "dw", "branches.left", "fc"} <= modules
