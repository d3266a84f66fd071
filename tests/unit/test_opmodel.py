"""The op model: seconds of ops no table holds, learned from the ops a table does hold.

A synthetic device stands in for a measured one: each op's time is a known function of its signature
(a per-call overhead plus its work at a rate that depends on the op's class), so what the model learns
can be checked against the truth on ops it never saw."""

import json

import pytest
import torch
from torch import nn

from decomp import GraphError, build_graph
from decomp.latency.job import ProfileRequest, run_profile, this_device
from decomp.latency.opmodel import MIN_ENTRIES, OpModel, op_class
from decomp.latency.predict import LatencyModel
from decomp.latency.sweep import sweep_blocks
from decomp.latency.table import OpTable, device_key, op_signature

KEY = device_key("cpu", 1)


def net(width: int, side: int, batch: int = 1) -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, groups=width),
        nn.GELU(),
        nn.Conv2d(width, 2 * width, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, 10),
    ).eval()
    return model, torch.randn(batch, 3, side, side)


def truth(signature: str) -> float:
    """The synthetic device: 4 us per call, MACs at 20 G/s (convolutions, matrix products), bytes at
    4 GB/s for the rest; GELU costs three times a ReLU."""
    what, ins, out, _, params, macs = json.loads(signature)
    elements = sum(torch.Size(s).numel() for s in ins) + torch.Size(out).numel()
    work = macs / 20e9 if macs else 4 * elements / 4e9
    return 4e-6 + work * (3 if what == "GELU" else 1)


def table_of(graphs) -> OpTable:
    table = OpTable(KEY)
    for graph in graphs:
        for n in graph.compute_nodes():
            sig = op_signature(graph, n)
            table.entries[sig] = truth(sig)
    return table


def graphs_of(sizes):
    return [build_graph(*net(w, s, b)) for w, s, b in sizes]


TRAIN = [(w, s, b) for w in (8, 16, 32, 64, 128) for s in (8, 16, 32, 64) for b in (1, 4)]


def test_learns_unseen_sizes_of_known_ops_from_the_table():
    table = table_of(graphs_of(TRAIN))
    model = OpModel.fit(table)
    for graph in graphs_of([(24, 24, 2), (48, 40, 1), (96, 12, 3)]):  # widths, sides and batches not in the table
        sigs = [op_signature(graph, n) for n in graph.compute_nodes()]
        assert not any(s in table.entries for s in sigs[:1])
        predicted, true = sum(model.predict(sigs)), sum(truth(s) for s in sigs)
        assert predicted == pytest.approx(true, rel=0.25)


def test_ops_beyond_the_table_grow_with_their_work():
    model = OpModel.fit(table_of(graphs_of(TRAIN)))
    small, large = (build_graph(*net(128, 64, b)) for b in (2, 16))  # 16 images: 4x the largest batch fitted on
    first = [op_signature(g, g.compute_nodes()[0]) for g in (small, large)]
    t_small, t_large = model.predict(first)
    assert t_large / t_small == pytest.approx(8, rel=0.3)  # 8x the MACs: ~8x the time, not clipped to the table


def test_fitting_is_deterministic_and_refits_when_the_table_changes():
    table = table_of(graphs_of(TRAIN))
    sigs = list(table.entries)[:20]
    assert OpModel.fit(table).predict(sigs) == OpModel.fit(table).predict(sigs)
    learned = table.op_model()
    assert table.op_model() is learned  # cached while the entries stay
    table.entries[sigs[0]] *= 0.5
    assert table.op_model() is not learned


def test_latency_model_prices_unseen_ops_by_the_op_model_and_small_tables_by_the_roofline():
    cluster = this_device("cpu", 1)
    graph = build_graph(*net(40, 20, 2))
    table = table_of(graphs_of(TRAIN))
    p = LatencyModel(cluster, {KEY: table}).predict(graph)
    assert p.estimated_ops == len(graph.compute_nodes())  # none measured
    true = sum(truth(op_signature(graph, n)) for n in graph.compute_nodes())
    assert p.compute_s[0] == pytest.approx(true, rel=0.25)
    small = OpTable(KEY, dict(list(table.entries.items())[: MIN_ENTRIES - 1]))
    assert small.op_model() is None
    roofline = LatencyModel(cluster).predict(graph)  # no table at all
    assert LatencyModel(cluster, {KEY: small}).predict(graph).compute_s[0] == pytest.approx(roofline.compute_s[0])
    with pytest.raises(GraphError, match="at least"):
        OpModel.fit(small)


def test_classes_and_bad_signatures():
    assert op_class("Conv2d") == "conv" and op_class("MultiheadAttention") == "gemm"
    assert op_class("GELU") == "transcendental" and op_class("view") == "view" and op_class("LayerNorm") == "norm"
    assert op_class("add:_operator.add") == "elementwise" and op_class("MaxPool2d") == "pool"
    model = OpModel.fit(table_of(graphs_of(TRAIN)))
    with pytest.raises(GraphError, match="not an op signature"):
        model.predict(["not json"])


def test_the_sweep_is_seeded_and_covers_every_op_class():
    first = [what for what, _, _ in sweep_blocks((1,), blocks=25)]
    assert first == [what for what, _, _ in sweep_blocks((1,), blocks=25)] and len(first) >= 15
    classes = set()
    for _, block, x in sweep_blocks((1,), blocks=25):
        graph = build_graph(block, x)
        classes |= {op_class(json.loads(op_signature(graph, n))[0]) for n in graph.compute_nodes()}
    assert {"conv", "gemm", "norm", "pool", "transcendental", "elementwise"} <= classes


def test_profile_unseen_prices_a_model_without_timing_its_ops(tmp_path):
    path = tmp_path / "table.json"
    table_of(graphs_of(TRAIN)).save(path)
    summary = run_profile(ProfileRequest("python:tests.tiny_models:tiny_net", table=str(path), repeats=3, unseen=True))
    assert summary.ops_profiled_now == 0 and summary.ops_learned > 0 and summary.predicted_s > 0
    assert len(OpTable.load(path).entries) == summary.table_entries  # nothing of the model added
