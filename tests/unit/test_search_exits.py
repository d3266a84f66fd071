"""The early-exit search space: exit point and threshold as genes, priced under the measured exit share."""

import pytest
import torch
from torch import nn

from decomp.errors import SearchError
from decomp.latency import LatencyModel
from decomp.latency.cluster import load_cluster
from search.exits import CLOSED, ExitEvaluator, ExitSpace
from search.objectives import objectives_for
from search.records import Candidate
from search.registry import make_searcher
from tests.tiny_models import brightness_batches


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).eval()


@pytest.fixture(scope="module")
def evaluator():
    data = brightness_batches(96)
    space = ExitSpace(["_1", "_3"])
    x = data[0][0]
    return ExitEvaluator(net(), (x,), space, LatencyModel(load_cluster("cpu-host-x4")), data, data, head_epochs=5)


def test_the_space_has_a_point_and_a_threshold_gene():
    space = ExitSpace(["_1", "_3"])
    assert space.names == ("exit", "threshold") and space.point_of((1, 0.5)) == "_3"
    assert (0, CLOSED) in space.baselines() and (1, CLOSED) in space.baselines()
    with pytest.raises(SearchError, match="at least one op"):
        ExitSpace([])


def test_expected_costs_follow_the_measured_exit_share(evaluator):
    def metrics(point: int, threshold: float) -> dict:
        return evaluator(Candidate(0, "t", (point, threshold)))

    closed, open_, middle = metrics(1, CLOSED), metrics(1, 0.0), metrics(1, 0.7)
    point = evaluator.point("_3")
    s0, s1 = point.stage_s
    assert closed["exit_share"] == 0.0 and closed["accuracy_drop"] == 0.0
    assert closed["comm_bytes"] == point.exits.cut_bytes[0] == 16 * 8 * 8 * 4
    assert closed["latency_s"] == pytest.approx(s0 + s1)
    assert open_["exit_share"] == 1.0 and open_["comm_bytes"] == 0.0 and open_["latency_s"] == pytest.approx(s0)
    assert open_["macs"] < middle["macs"] <= closed["macs"] or middle["exit_share"] in (0.0, 1.0)
    p = middle["exit_share"]
    assert middle["comm_bytes"] == pytest.approx((1 - p) * point.exits.cut_bytes[0])
    assert middle["throughput"] == pytest.approx(point.micro_batch / max(s0, (1 - p) * s1))
    # an earlier exit is cheaper up to it
    assert metrics(0, 0.0)["macs"] < open_["macs"]


def test_a_searcher_runs_on_the_space(evaluator):
    objectives = objectives_for(("accuracy", "macs", "comm_bytes", "latency_s"))
    searcher = make_searcher("random", evaluator.space, objectives, seed=0)
    for _ in range(3):
        for c in searcher.ask(4):
            e = evaluator.evaluate(c, objectives)
            assert e.ok, e.message
            searcher.tell(c, e)
    assert searcher.front()
