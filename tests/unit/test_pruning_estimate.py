"""The pruning estimate against physical pruning: costs of the estimated graph equal those of the model
pruned by `apply_plan` and traced again, op by op where the names match."""

import math
import time

import pytest
import torch

from decomp import GraphError, InvalidPlanError, build_graph
from decomp.coarsen import coarsen
from decomp.latency import LatencyModel
from decomp.latency.cluster import load_cluster
from decomp.pruning import (
    Estimator,
    GroupChoice,
    LayerSparsity,
    PruningPlan,
    annotate_graph,
    apply_plan,
    estimate_pruned,
    find_groups,
    kept_fractions,
    plan_for_ratio,
    resolve_plan,
)
from tests.tiny_models import TinyNet
from tests.tiny_prunable import CASES

MODELS = {"tiny": (TinyNet, (1, 3, 8, 8)), **{k: v for k, v in CASES.items() if k != "split"}}


def _setup(model, inputs, tracer="fx"):
    graph = build_graph(model, inputs, tracer=tracer)
    index = find_groups(model, inputs)
    annotate_graph(graph, index)
    return graph, index


def _tiny(case):
    cls, shape = MODELS[case]
    torch.manual_seed(0)
    model, inputs = cls().eval(), (torch.randn(shape),)
    return model, inputs, *_setup(model, inputs)


def _assert_matches_physical(model, inputs, graph, plan, tracer="fx", rel=1e-9):
    """Totals, and each op's MACs, params and output bytes (and each edge's bytes) where names match."""
    estimated = estimate_pruned(graph, plan)
    physical = build_graph(apply_plan(model, plan, inputs).module, inputs, tracer=tracer)
    for key in ("macs", "params", "activation_bytes"):
        assert getattr(estimated.totals, key) == pytest.approx(getattr(physical.totals, key), rel=rel), key
    common = [n for n in physical.nx.nodes if n in estimated]
    assert len(common) >= 0.9 * len(physical)
    for n in common:
        for key in ("macs", "params", "param_bytes", "out_bytes"):
            assert estimated[n][key] == pytest.approx(physical[n][key], rel=rel, abs=1), (n, key)
    for u, v, data in physical.nx.edges(data=True):
        if estimated.nx.has_edge(u, v):
            assert estimated.nx.edges[u, v]["bytes"] == pytest.approx(data["bytes"], rel=rel, abs=1), (u, v)
    return estimated


@pytest.mark.parametrize("case", sorted(MODELS))
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_tiny_models_match_physical_pruning(case, ratio):
    model, inputs, graph, index = _tiny(case)
    estimated = _assert_matches_physical(model, inputs, graph, plan_for_ratio(index, ratio))
    assert estimated.totals.macs < graph.totals.macs
    assert graph.totals.macs == build_graph(model, inputs).totals.macs  # the input graph is left as it was


@pytest.mark.parametrize("case", ["tiny", "depthwise", "concat"])
def test_mixed_ratios_explicit_channels_and_rounding_match(case):
    model, inputs, graph, index = _tiny(case)
    groups = list(index)
    ratios = [0.25, 0.75, 0.5, 0.375]
    mixed = PruningPlan(groups=tuple(GroupChoice(g.id, keep_ratio=ratios[i % 4]) for i, g in enumerate(groups)))
    _assert_matches_physical(model, inputs, graph, mixed)
    _assert_matches_physical(model, inputs, graph, plan_for_ratio(index, 0.4, round_to=4))
    explicit = resolve_plan(mixed, index)  # explicit kept indices
    _assert_matches_physical(model, inputs, graph, explicit)


def test_kept_fractions_count_what_resolve_plan_keeps():
    model, inputs, graph, index = _tiny("depthwise")  # groups with 2 slices
    for round_to in (1, 2, 3, 4):
        plan = plan_for_ratio(index, 0.6, round_to=round_to)
        fractions = kept_fractions(graph, plan)
        for choice in resolve_plan(plan, index).groups:
            assert fractions[choice.group] * index[choice.group].channels == len(choice.keep)
    assert kept_fractions(graph, PruningPlan()) == dict.fromkeys(graph.nx.graph["groups"], 1.0)


def test_estimate_arrays_and_depthwise_once():
    model, inputs, graph, index = _tiny("tiny")
    estimator = Estimator(graph)
    estimate = estimator(PruningPlan(groups=(GroupChoice("stem", keep_ratio=0.5),)))
    dw, fuse = estimator.index["dw"], estimator.index["fuse"]
    assert estimator.depthwise[dw] and estimate.macs[dw] == graph["dw"]["macs"] / 2  # in and out pruned once
    assert estimate.macs[fuse] == graph["fuse"]["macs"]  # reads the branches, not the stem group
    assert estimate.total_macs == pytest.approx(float(estimate.macs.sum()))
    assert estimator(PruningPlan()).total_macs == graph.totals.macs


def test_unstructured_and_nm_leave_dense_costs_and_count_nonzeros():
    model, inputs, graph, index = _tiny("tiny")
    plan = PruningPlan(
        groups=(GroupChoice("branches.right", keep_ratio=0.5),),
        layers=(LayerSparsity("branches.right", pattern="2:4"), LayerSparsity("fuse", sparsity=0.25)),
    )
    estimate = Estimator(graph)(plan)
    dense = Estimator(graph)(PruningPlan(groups=plan.groups))
    assert estimate.total_macs == dense.total_macs and estimate.total_params == dense.total_params
    pruned = apply_plan(model, plan, inputs).module
    zeroed = sum(int((pruned.get_submodule(item.layer).weight == 0).sum()) for item in plan.layers)
    assert zeroed > 0
    assert estimate.nonzero_params == pytest.approx(sum(p.numel() for p in pruned.parameters()) - zeroed, abs=1)
    with pytest.raises(InvalidPlanError, match="no weighted op of layer 'nope'"):
        Estimator(graph)(PruningPlan(layers=(LayerSparsity("nope", sparsity=0.5),)))


def test_seconds_scale_and_predict_uses_them():
    model, inputs, graph, index = _tiny("tiny")
    for n in graph.compute_nodes():
        graph.nx.nodes[n]["seconds"] = 1e-3
    plan = PruningPlan(groups=(GroupChoice("stem", keep_ratio=0.25),))
    estimator = Estimator(graph)
    estimate = estimator(plan)
    stem, relu = estimator.index["stem"], estimator.index["relu"]
    assert estimate.seconds[stem] == pytest.approx(1e-3 * estimate.macs[stem] / graph["stem"]["macs"])
    assert estimate.seconds[relu] == pytest.approx(0.25e-3)  # reads and writes a quarter of the bytes
    scaled = estimator.graph_of(estimate)
    prediction = LatencyModel(load_cluster("cpu-host-x2")).predict(scaled)
    assert prediction.estimated_ops == 0  # every op priced by its own seconds, no roofline
    assert prediction.compute_s[0] == pytest.approx(sum(scaled[n]["seconds"] for n in scaled.compute_nodes()))


def test_plans_that_do_not_fit_the_graph():
    model, inputs, graph, index = _tiny("concat")
    with pytest.raises(InvalidPlanError, match="no coupling group 'middle'"):
        Estimator(graph)(PruningPlan(groups=(GroupChoice("middle", keep_ratio=0.5),)))
    bare = build_graph(model, inputs)
    assert Estimator(bare)(PruningPlan()).total_macs == bare.totals.macs
    with pytest.raises(GraphError, match="annotate_graph"):
        Estimator(bare)(PruningPlan(groups=(GroupChoice("left", keep_ratio=0.5),)))
    with pytest.raises(GraphError, match="op graph"):
        Estimator(coarsen(graph, blocks=2))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_match_physical_pruning(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    inputs = (torch.randn(1, 3, 224, 224),)
    graph, index = _setup(model, inputs)
    ids = [g.id for g in index]
    mixed = PruningPlan(
        groups=tuple(GroupChoice(g, keep_ratio=(1.0, 0.75, 0.5, 0.25)[i % 4]) for i, g in enumerate(ids))
    )
    for plan in (plan_for_ratio(index, 0.25), plan_for_ratio(index, 0.5, round_to=8), mixed):
        _assert_matches_physical(model, inputs, graph, plan, rel=0.02)
    estimator = Estimator(graph)
    estimator(mixed)
    start = time.perf_counter()
    for _ in range(20):
        estimator(mixed)
    assert (time.perf_counter() - start) / 20 < 0.05  # about 0.1-0.3 ms here; a copy of the graph costs 2 ms


@pytest.mark.slow
def test_attention_heads_of_gpt2_match_physical_pruning():
    from decomp import load_model

    loaded = load_model("hf:gpt2?n_layer=2&n_embd=32&n_head=4&vocab_size=50&n_positions=16", input_shapes=[(2, 8)])
    model, inputs = loaded.module, loaded.example_inputs
    graph, index = _setup(model, inputs, loaded.tracer)
    plan = PruningPlan(groups=(GroupChoice("h.0.attn", keep=(1, 3)), GroupChoice("h.1.mlp.c_fc", keep_ratio=0.25)))
    for p in (plan, plan_for_ratio(index, 0.5)):
        _assert_matches_physical(model, inputs, graph, p, tracer=loaded.tracer)
    assert not math.isclose(estimate_pruned(graph, plan).totals.params, graph.totals.params)
