"""The decomposition search space (depth cuts, width splits, groups per region) and its evaluator."""

import pytest
import torch
from torch import nn

from decomp.build import build_graph
from decomp.errors import SearchError
from decomp.latency import LatencyModel
from decomp.latency.cluster import load_cluster
from decomp.pruning.train import TrainConfig
from search.decomposition import DecompositionEvaluator, DecompositionSpace
from search.objectives import objectives_for
from search.records import Candidate
from search.registry import make_searcher
from tests.tiny_models import brightness_batches

REGION = ("0", "3", "6")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def batches(n: int = 48, seed: int = 0):
    return brightness_batches(n, seed, shape=(1, 6, 6))


def space(devices: int = 4, options=None):
    x = torch.randn(8, 1, 6, 6)
    graph = build_graph(cnn(), (x,))
    kwargs = {} if options is None else {"options": options}
    return DecompositionSpace(graph, [REGION], devices, **kwargs), x


def test_genes_and_options_fit_the_devices():
    s, _ = space(devices=2)
    assert s.names[0] == "kind:0" and "parts" in s.names and "cut:0" in s.names
    assert s.options == (("depth", 1), ("width", 2), ("group", 2))  # 4 ways need 4 devices
    with pytest.raises(SearchError, match="depth"):
        space(options=(("group", 2),))
    with pytest.raises(SearchError, match="two or more layers"):
        DecompositionSpace(build_graph(cnn(), (torch.randn(2, 1, 6, 6),)), [("0",)], 2)


def test_a_split_region_has_one_genome_and_no_pipeline_plan():
    s, _ = space()
    group = s.options.index(("group", 2)) + 0.0
    a = s.repair([group, 3, 0.2, 0.5, 0.9])
    b = s.repair([group, 2, 0.7, 0.1, 0.3])
    assert a == b and s.decode(a) == (None, None) and s.kinds_of(a) == (("group", 2),)
    whole = s.repair([0, 3, 0.2, 0.5, 0.9])
    _, plan = s.decode(whole)
    assert plan is not None and plan.parts == 3 and plan.mode == "pipeline"
    assert s.repair(whole) == whole
    firsts = {s.kinds_of(g)[0] for g in s.baselines()}
    assert firsts == set(s.options)


def test_the_evaluator_prices_each_kind_on_its_own_graph():
    s, x = space()
    data = batches()
    latency = LatencyModel(load_cluster("cpu-host-x4"))
    evaluator = DecompositionEvaluator(cnn(), (x,), s, latency, data, data, TrainConfig(epochs=1, lr=1e-3))
    objectives = objectives_for(("accuracy", "latency_s", "comm_bytes", "macs"))

    def metrics(kind, rest=(1, 0.0, 0.0, 0.0)):
        genome = s.repair([s.options.index(kind), *rest])
        c = Candidate(0, "t", genome, *s.decode(genome))
        e = evaluator.evaluate(c, objectives)
        assert e.ok, e.message
        return e.metrics

    whole, two_stages = metrics(("depth", 1)), metrics(("depth", 1), (2, 0.5, 0.0, 0.0))
    width, group = metrics(("width", 2)), metrics(("group", 2))
    assert whole["comm_bytes"] < two_stages["comm_bytes"] and whole["macs"] == two_stages["macs"]
    assert width["accuracy"] == whole["accuracy"] and width["macs"] == whole["macs"]  # a width split is exact
    assert width["comm_bytes"] > whole["comm_bytes"]  # its ways meet again: their slices are sent
    assert group["macs"] < whole["macs"]  # the weights between groups are gone
    assert evaluator.variant((("group", 2),)) is evaluator.variant((("group", 2),))  # built once


def test_a_searcher_runs_on_the_space():
    s, x = space(devices=2)
    data = batches()
    evaluator = DecompositionEvaluator(
        cnn(), (x,), s, LatencyModel(load_cluster("cpu-host-x4")), data, data, TrainConfig(epochs=1, lr=1e-3)
    )
    objectives = objectives_for(("accuracy", "latency_s", "macs"))
    searcher = make_searcher("random", s, objectives, seed=0)
    seen = set()
    for _ in range(3):
        for c in searcher.ask(4):
            e = evaluator.evaluate(c, objectives)
            assert e.ok, e.message
            searcher.tell(c, e)
            seen.add(s.kinds_of(c.genome))
    assert len(seen) == 3 and searcher.front()  # the baselines alone cover every option


def test_splits_that_need_more_parts_than_devices_are_made_whole():
    torch.manual_seed(0)
    layers = []
    for i in range(6):
        layers += [nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    graph = build_graph(model, (torch.randn(2, 1, 6, 6),))
    s = DecompositionSpace(graph, [("0", "2", "4"), ("6", "8", "10")], 4)
    index = s.options.index
    rest = [1, 0.0, 0.0, 0.0]
    assert s.parts_needed((("group", 4), ("group", 2))) == 8
    assert s.kinds_of(s.repair([index(("group", 4)), index(("group", 2)), *rest])) == (("group", 4), ("depth", 1))
    kept = s.repair([index(("width", 2)), index(("group", 2)), *rest])
    assert s.kinds_of(kept) == (("width", 2), ("group", 2)) and s.parts_needed(s.kinds_of(kept)) == 4
