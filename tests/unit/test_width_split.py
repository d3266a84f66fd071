"""Width splits: a layer's channels across parts, gathered or (paired with the next layer) summed."""

import json

import pytest
import torch
from torch import nn

from decomp import InvalidPlanError, build_graph
from decomp.partition import partition_metrics, quotient, read_manifest, split_model
from decomp.partition.job import SplitRequest, run_split
from decomp.partition.width import WidthSplit, parse_width, split_width, width_plan


class Mlp(nn.Module):
    """A transformer-style MLP (column/row pair) with a residual, then a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16)
        self.fc1 = nn.Linear(16, 64)
        self.act = nn.GELU()
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(64, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = x + self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))
        return self.head(x)


def convs() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Conv2d(8, 24, 3, padding=1, bias=False),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.Conv2d(24, 12, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 6, 1),
    )


def _randomised(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # statistics that are not the identity
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("ways", [2, 4])
def test_paired_and_gathered_linear_splits_compute_the_model(ways):
    model, x = _randomised(Mlp()), torch.randn(3, 5, 16)
    split = split_width(model, x, [WidthSplit("fc1", ways, then="fc2"), WidthSplit("head", ways)])
    assert split.max_abs_diff <= 1e-5
    assert [len(w) for w in split.slices] == [ways, ways]
    assert all(len(nodes) == 4 for nodes in split.slices[0])  # fc1, GELU, dropout, fc2 per way
    torch.testing.assert_close(split.module(x), model(x), atol=1e-5, rtol=0)
    graph = build_graph(split.module, x)
    plan = width_plan(graph, split)
    assert plan.parts == 2 * ways and plan.mode == "dag"
    # the ways of a split exchange nothing: no tensor from one way's ops to another's
    way_of = {n: (i, k) for i, w in enumerate(split.slices) for k, nodes in enumerate(w) for n in nodes}
    for u, v in graph.nx.edges:
        if u in way_of and v in way_of and way_of[u][0] == way_of[v][0]:
            assert way_of[u][1] == way_of[v][1], (u, v)
    assert {plan.part_of()[n] for n in split.slices[0][1]} == {1}  # way k of the first split on part k
    q = quotient(graph, plan)
    assert all(u < v for u, v in q.edges)  # tensors flow from lower parts to higher: the parts run as a DAG
    parts = split_model(split.module, (x,), plan)
    torch.testing.assert_close(parts(x)[0], model(x), atol=1e-5, rtol=0)
    # the bytes the cost model says the plan moves are the bytes the parts receive when run
    tensors = parts.tensors(x)
    received = sum(tensors[name].numel() * 4 for part in parts.layout.parts for name in part.inputs)
    assert partition_metrics(graph, plan).comm_bytes == received


@pytest.mark.parametrize("ways", [2, 4])
def test_consecutive_convolutions_split_with_batchnorm_sliced(ways):
    model, x = _randomised(convs()), torch.randn(2, 3, 12, 12)
    split = split_width(model, x, [WidthSplit("1", ways, then="4"), WidthSplit("6", 2)])
    torch.testing.assert_close(split.module(x), model(x), atol=1e-5, rtol=0)
    norms = [m for m in split.module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == ways and sum(n.num_features for n in norms) == 24
    graph = build_graph(split.module, x)
    out = split_model(split.module, (x,), width_plan(graph, split))(x)[0]
    torch.testing.assert_close(out, model(x), atol=1e-5, rtol=0)


def test_bad_splits_are_refused_with_the_reason():
    model, x = _randomised(Mlp()), torch.randn(2, 16)
    with pytest.raises(InvalidPlanError, match="no layer 'fc9'"):
        split_width(model, x, [WidthSplit("fc9", 2)])
    with pytest.raises(InvalidPlanError, match="head reads 16 channels, fc1 makes 64"):
        split_width(model, x, [WidthSplit("fc1", 2, then="head")])
    normed = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 8)).eval()
    with pytest.raises(InvalidPlanError, match="mixes channels"):  # a LayerNorm normalises over the split channels
        split_width(normed, torch.randn(2, 8), [WidthSplit("0", 2, then="2")])
    with pytest.raises(InvalidPlanError, match="ways >= 2"):
        WidthSplit("fc1", 1)
    with pytest.raises(InvalidPlanError, match="fewer than 100 ways"):
        split_width(model, x, [WidthSplit("head", 100)])
    with pytest.raises(InvalidPlanError, match="LayerNorm"):
        split_width(model, x, [WidthSplit("norm", 2)])
    with pytest.raises(InvalidPlanError, match="LAYER:WAYS"):
        parse_width("fc1")
    assert parse_width("fc1:4:fc2") == WidthSplit("fc1", 4, "fc2")
    assert WidthSplit.from_json(json.loads(json.dumps(WidthSplit("a", 2, "b").to_json()))) == WidthSplit("a", 2, "b")
    with pytest.raises(InvalidPlanError, match="unknown width split key"):
        WidthSplit.from_json({"layer": "a", "ways": 2, "heads": 4})

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    with pytest.raises(InvalidPlanError, match="called 2 times"):
        split_width(Twice().eval(), torch.randn(1, 4), [WidthSplit("fc", 2)])


def test_split_job_exports_width_splits_verified_against_the_model(tmp_path):
    summary = run_split(
        SplitRequest("python:tests.tiny_models:tiny_net", 2, "dag", width=(WidthSplit("stem", 2), WidthSplit("fc", 2))),
        tmp_path / "out",
    )
    assert summary.max_abs_diff <= 1e-5 and summary.plan.parts == 4  # two ways of each of two splits
    manifest = read_manifest(tmp_path / "out")
    assert manifest.expected_costs["width_splits"][1] == {"layer": "fc", "ways": 2, "then": None}
    with pytest.raises(InvalidPlanError, match="--mode dag"):
        SplitRequest("x", 2, "pipeline", width=(WidthSplit("conv1", 2),))
    with pytest.raises(InvalidPlanError, match="agree"):
        SplitRequest("x", 3, "dag", width=(WidthSplit("conv1", 2),))


@pytest.mark.parametrize("ways", [2, 4])
def test_attention_heads_split_and_summed(ways):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model, x = VisionTransformer(32, 8, 2, 4, 64, 128).eval(), torch.randn(2, 3, 32, 32)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: outputs would all be 0
    layer = "encoder.layers.encoder_layer_{}."
    splits = [
        WidthSplit(layer.format(0) + "self_attention", ways),
        WidthSplit(layer.format(0) + "mlp.0", ways, then=layer.format(0) + "mlp.3"),
        WidthSplit(layer.format(1) + "self_attention", ways),
    ]
    split = split_width(model, x, splits)
    assert split.max_abs_diff <= 1e-4
    assert all(any("scaled_dot_product_attention" in n for n in way) for way in split.slices[0])
    graph = build_graph(split.module, x)
    plan = width_plan(graph, split)
    assert plan.parts == 3 * ways
    torch.testing.assert_close(split_model(split.module, (x,), plan)(x)[0], model(x), atol=1e-4, rtol=0)
    with pytest.raises(InvalidPlanError, match="fewer heads"):
        split_width(model, x, [WidthSplit(layer.format(0) + "self_attention", 5)])


def test_the_latency_model_prices_a_width_split_part_by_part():
    from decomp.latency import LatencyModel, load_cluster

    model, x = _randomised(Mlp()), torch.randn(8, 5, 16)
    split = split_width(model, x, [WidthSplit("fc1", 2, then="fc2")])
    graph = build_graph(split.module, x)
    for n in graph.compute_nodes():  # every op 1 ms per 1000 MACs, 10 us at least
        graph.nx.nodes[n]["seconds"] = max(1e-5, graph[n]["macs"] / 1e6)
    plan = width_plan(graph, split)
    cluster = load_cluster("cpu-host-x2")
    prediction = LatencyModel(cluster).predict(graph, plan)
    ways = [sum(graph[n]["seconds"] for n in nodes) for nodes in split.slices[0]]
    assert ways[0] == pytest.approx(ways[1])  # the two ways of the pair cost the same
    part = plan.part_of()
    compute = [sum(graph[n]["seconds"] for n in graph.compute_nodes() if part[n] == p) for p in range(plan.parts)]
    assert prediction.compute_s == pytest.approx(tuple(compute))
    # the second part receives the first way's partial sum and the input it needs, over the link
    assert prediction.stage_s[1] > prediction.compute_s[1] and prediction.comm_s > 0


@pytest.mark.parametrize("ways", [2, 4])
def test_gpt2_attention_and_mlp_blocks_split_through_export(tmp_path, ways):
    spec = "hf:gpt2?n_layer=2&n_embd=64&n_head=4"
    width = (WidthSplit("h.0.attn", ways), WidthSplit("h.0.mlp", ways), WidthSplit("h.1.mlp", ways))
    summary = run_split(SplitRequest(spec, ways, "dag", input_shapes=((1, 16),), width=width), tmp_path / "out")
    assert summary.max_abs_diff <= 1e-4 and summary.plan.parts == 3 * ways
    assert read_manifest(tmp_path / "out").expected_costs["width_splits"][0] == {
        "layer": "h.0.attn",
        "ways": ways,
        "then": None,
    }
    with pytest.raises(InvalidPlanError, match="whole blocks"):  # single layers of a torch.export-traced model
        run_split(SplitRequest(spec, 2, "dag", input_shapes=((1, 16),), width=(WidthSplit("wte", 2),)), tmp_path / "x")
    with pytest.raises(InvalidPlanError, match="fewer than 8 ways"):
        run_split(
            SplitRequest(spec, 8, "dag", input_shapes=((1, 16),), width=(WidthSplit("h.0.attn", 8),)), tmp_path / "y"
        )
