"""Cluster specs, op tables and the latency predictor on tiny models."""

import json

import pytest
import torch
from torch import nn

from decomp import GraphError, InvalidPlanError, SpecError, build_graph
from decomp.latency.cluster import PRESETS, ClusterSpec, load_cluster, parse_any_quantity, parse_quantity
from decomp.latency.predict import Calibration, LatencyModel, calibrate
from decomp.latency.table import OpTable, device_key, op_signature, profile_ops
from decomp.partition import PartitionPlan, crossings, partition_metrics

TWO_HOSTS = {
    "name": "two",
    "kinds": {"cpu": {"type": "cpu", "peak_flops": "10 GFLOP/s", "mem_bandwidth": "10 GB/s", "memory": "1 GiB"}},
    "nodes": [{"name": "a", "devices": {"cpu": 2}}, {"name": "b", "devices": {"cpu": 1}}],
    "intra_node": {"bandwidth": "1 GB/s", "latency": "1 ms"},
    "inter_node": {"bandwidth": "8 Gb/s", "latency": "10 ms"},
}


def mlp(width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 4))


def test_quantities_and_links():
    assert parse_quantity("25 Gb/s", "bytes/s", "x") == 25e9 / 8
    assert parse_quantity("80 GiB", "bytes", "x") == 80 * 2**30
    assert parse_quantity(5e-6, "seconds", "x") == 5e-6
    with pytest.raises(SpecError, match="unit 'GiB' is not a unit of bytes/s; use one of B/s"):
        parse_quantity("3 GiB", "bytes/s", "links.bandwidth")
    assert [parse_any_quantity(v, "x") for v in ("2 GiB", "5 ms", "25 Gb/s", "1e9", -1, "0")] == [
        2 * 2**30,
        5e-3,
        25e9 / 8,
        1e9,
        -1.0,
        0.0,
    ]
    with pytest.raises(SpecError, match="constraints.memory: cannot read '5 parsecs' as a number or a quantity"):
        parse_any_quantity("5 parsecs", "constraints.memory")
    cluster = ClusterSpec.from_dict(TWO_HOSTS)
    assert [d.id for d in cluster.devices] == ["a/cpu:0", "a/cpu:1", "b/cpu:0"]
    assert cluster.link(0, 1).time(1e9) == pytest.approx(1.001)
    assert cluster.link(0, 2).time(1e9) == pytest.approx(1.01)
    assert cluster.link(1, 1).time(1e9) == 0.0 and cluster.link(0, 2).time(0) == 0.0
    assert ClusterSpec.from_dict(json.loads(json.dumps(cluster.to_dict()))) == cluster


def test_presets_load_and_bad_specs_name_the_key(tmp_path):
    for name in PRESETS:
        assert load_cluster(name).devices
    assert len(load_cluster("h100x4-nvlink").devices) == 4
    bad = {**TWO_HOSTS, "gpus": 4}
    with pytest.raises(SpecError, match="unknown key\\(s\\) 'gpus'; valid keys: name, kinds, nodes"):
        ClusterSpec.from_dict(bad)
    with pytest.raises(SpecError, match="names device kind 'gpu'; defined kinds: cpu"):
        ClusterSpec.from_dict({**TWO_HOSTS, "nodes": [{"devices": {"gpu": 1}}]})
    (tmp_path / "c.yaml").write_text(
        "kinds:\n  x: {type: tpu, peak_flops: 1, mem_bandwidth: 1, memory: 1}\nnodes: [{devices: {x: 1}}]\n"
    )
    with pytest.raises(SpecError, match="type must be one of cpu, gpu"):
        load_cluster(tmp_path / "c.yaml")
    with pytest.raises(SpecError, match="neither a preset"):
        load_cluster("nowhere")


def test_profile_fills_the_table_once_and_reloads(tmp_path):
    model, x = mlp().eval(), torch.randn(8, 16)
    table = OpTable(device_key(threads=1))
    graph, measured = profile_ops(model, x, table, threads=1, min_run_time=0.01)
    assert measured == len(graph.compute_nodes()) - 1  # the two ReLUs see the same shapes: one signature
    assert not table.missing(graph) and all(v > 0 for v in table.entries.values())
    assert profile_ops(model, x, table, threads=1)[1] == 0  # warm table: nothing to measure
    path = table.save(tmp_path / "t.json")
    assert OpTable.load(path, table.device).entries == table.entries
    isolated = OpTable(table.device)
    assert profile_ops(model, x, isolated, threads=1, method="isolated", min_run_time=0.01)[1] == measured
    slower = OpTable(table.device, {k: 2 * v for k, v in table.entries.items()} | {"extra": 1.0})
    merged = OpTable(table.device, dict(table.entries)).merge(slower)
    assert merged.entries == {**table.entries, "extra": 1.0}  # the lesser time wins, new entries join
    with pytest.raises(GraphError, match="cannot merge"):
        merged.merge(OpTable("cuda:other"))
    with pytest.raises(GraphError, match="unknown profiling method 'guess'"):
        profile_ops(model, x, table, method="guess")
    with pytest.raises(GraphError, match="was measured on"):
        OpTable.load(path, "cuda:other")
    # a wider model shares no Linear signature but the ReLU-free ops of the same width
    wider = build_graph(mlp(64).eval(), x)
    assert len(table.missing(wider)) > 0


def test_prediction_adds_up_stages_transfers_and_bubble():
    model, x = mlp().eval(), torch.randn(8, 16)
    graph = build_graph(model, x)
    nodes = graph.compute_nodes()
    table = OpTable("test", {op_signature(graph, n): 1e-3 for n in nodes})  # every op 1 ms
    cluster = ClusterSpec.from_dict(TWO_HOSTS)
    model_ = LatencyModel(cluster, {"cpu": table})
    whole = model_.predict(graph)
    assert whole.compute_s == pytest.approx((len(nodes) * 1e-3,)) and whole.estimated_ops == 0
    assert whole.throughput == pytest.approx(8 / (len(nodes) * 1e-3))

    plan = PartitionPlan.pipeline(graph, [2])
    cut_bytes = partition_metrics(graph, plan).cut_bytes
    p = model_.predict(graph, plan, micro_batches=4, devices=[0, 2])  # across nodes
    transfer = 10e-3 + cut_bytes / 1e9
    assert p.compute_s == pytest.approx((2e-3, (len(nodes) - 2) * 1e-3))
    assert p.stage_s[1] == pytest.approx(p.compute_s[1] + transfer)
    assert p.bottleneck_s == max(p.stage_s) and p.bubble == pytest.approx(1 / 5)
    assert p.latency_s == pytest.approx(sum(p.compute_s) + transfer + 3 * p.bottleneck_s)
    assert p.throughput == pytest.approx(4 * 8 / (5 * p.bottleneck_s))
    assert p.comm_s == pytest.approx(4 * transfer)
    same_node = model_.predict(graph, plan, micro_batches=4, devices=[0, 1])
    assert same_node.comm_s < p.comm_s
    # two copies of the pipeline deal the 4 micro-batches in turn: 2 each
    two = model_.predict(graph, plan, micro_batches=4, devices=[0, 2], replicas=2)
    assert two.replicas == 2 and two.bottleneck_s == pytest.approx(p.bottleneck_s)
    assert two.latency_s == pytest.approx(sum(p.compute_s) + transfer + 1 * p.bottleneck_s)
    assert two.throughput == pytest.approx(4 * 8 / (3 * p.bottleneck_s)) and two.bubble == pytest.approx(1 / 3)
    with pytest.raises(InvalidPlanError, match="replicas"):
        model_.predict(graph, plan, replicas=0)

    cal = LatencyModel(cluster, {"cpu": table}, {"cpu": Calibration(scale=2.0, per_op=1e-4, fixed=1e-3)})
    assert cal.predict(graph).compute_s[0] == pytest.approx(2 * len(nodes) * 1e-3 + len(nodes) * 1e-4 + 1e-3)
    # runtime terms: each part's calls cost per_call plus per_in_byte per byte it receives, outside compute
    runtime = LatencyModel(cluster, {"cpu": table}, {"cpu": Calibration(per_call=2e-3, per_in_byte=1e-9)})
    r = runtime.predict(graph, plan, micro_batches=4, devices=[0, 1])
    assert r.compute_s == pytest.approx(same_node.compute_s)
    input_bytes = sum(b for _, src, _, b in crossings(graph, plan) if src is None)
    assert r.stage_s[1] - same_node.stage_s[1] == pytest.approx(2e-3 + 1e-9 * cut_bytes)
    assert r.stage_s[0] - same_node.stage_s[0] == pytest.approx(2e-3 + 1e-9 * input_bytes)


def test_missing_ops_fall_back_to_the_roofline_and_are_counted():
    graph = build_graph(mlp().eval(), torch.randn(8, 16))
    cluster = ClusterSpec.from_dict(TWO_HOSTS)
    p = LatencyModel(cluster).predict(graph)
    assert p.estimated_ops == len(graph.compute_nodes())
    first = graph.compute_nodes()[0]  # Linear 16 -> 32 on 8 rows: 4096 MACs at 10 GFLOP/s
    assert p.compute_s[0] >= 2 * graph[first]["macs"] / 10e9


def test_calibration_recovers_known_terms_and_stays_non_negative():
    ops = [10, 20, 40, 80, 15]
    sums = [0.01, 0.03, 0.02, 0.09, 0.05]
    measured = [1.5 * s + 2e-4 * n + 3e-3 for s, n in zip(sums, ops, strict=True)]
    fit = calibrate(sums, ops, measured)
    assert fit.scale == pytest.approx(1.5) and fit.per_op == pytest.approx(2e-4) and fit.fixed == pytest.approx(3e-3)
    shrunk = calibrate(sums, ops, [0.9 * s for s in sums])  # no overhead at all: terms clipped at 0
    assert shrunk.scale == pytest.approx(0.9, rel=1e-3) and shrunk.per_op >= 0 and shrunk.fixed >= 0
    with pytest.raises(GraphError, match="at least 3 runs"):
        calibrate([0.1], [1], [0.1])


def test_profile_command_builds_the_table_and_compares(tmp_path):
    from typer.testing import CliRunner

    from cluster.cli import app

    table, out = tmp_path / "table.json", tmp_path / "p.json"
    args = ["profile", "python:tests.tiny_models:tiny_net", "--table", str(table), "--repeats", "3", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["ops_profiled_now"] > 0 and summary["table_entries"] == len(json.loads(table.read_text())["entries"])
    assert summary["predicted_s"] > 0 and summary["measured_s"] > 0
    assert "predicted" in result.output and "measured" in result.output
    again = CliRunner().invoke(app, [*args[:-2], "--json", str(tmp_path / "q.json")])
    assert again.exit_code == 0 and json.loads((tmp_path / "q.json").read_text())["ops_profiled_now"] == 0
