"""The searcher contract, for every registered searcher on the joint pruning x partition space of a tiny model
(pipeline and DAG): baselines first, candidates repaired and inside the space, ids unique, the same seed the
same candidates, an exact state round trip through JSON mid-run, failed evaluations survived, and a front of
feasible, non-dominated results only."""

import json

import numpy as np
import pytest
import torch

from decomp import build_graph
from decomp.latency import CostModel, LatencyModel
from decomp.latency.cluster import load_cluster
from decomp.pruning import annotate_graph, channel_importance, find_groups
from search.joint import JointConfig, JointSpace
from search.objectives import CostEvaluator, objectives_for
from search.pareto import minimized, non_dominated
from search.records import Constraint, Evaluation
from search.registry import make_searcher, searcher_names
from tests.tiny_models import TinyNet

OBJECTIVES = objectives_for(("macs", "latency_s", "comm_bytes", "accuracy_proxy"))
SETTINGS = {"nsga2": {"population": 6}, "skopt": {"max_points": 20, "n_restarts_optimizer": 0, "n_initial_points": 4}}


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model, inputs = TinyNet().eval(), (torch.randn(1, 3, 8, 8),)
    graph = build_graph(model, inputs)
    index = find_groups(model, inputs)
    annotate_graph(graph, index)
    importances = {g.id: channel_importance(index, g.id, "l1").tolist() for g in index}
    cost = CostModel(graph, LatencyModel(load_cluster("cpu-host-x4")), micro_batches=2, importances=importances)
    return graph, CostEvaluator(cost)


def _space(graph, mode):
    return JointSpace(graph, 3, JointConfig(mode=mode, levels=(1.0, 0.75, 0.5), blocks=6))


def _drive(searcher, evaluator, rounds, batch=3, fail_every=0, constraints=()):
    asked = []
    for _ in range(rounds):
        for c in searcher.ask(batch):
            asked.append(c)
            if fail_every and c.id % fail_every == fail_every - 1:
                searcher.tell(c, Evaluation.failed(c.id, "a worker died"))
            else:
                searcher.tell(c, evaluator.evaluate(c, OBJECTIVES, constraints))
    return asked


@pytest.mark.parametrize("mode", ["pipeline", "dag"])
@pytest.mark.parametrize("name", searcher_names())
def test_every_searcher_keeps_the_contract(problem, name, mode):
    graph, evaluator = problem
    space = _space(graph, mode)
    searcher = make_searcher(name, space, OBJECTIVES, seed=3, **SETTINGS.get(name, {}))
    asked = _drive(searcher, evaluator, rounds=4, fail_every=5)
    baselines = space.baselines()
    assert [c.genome for c in asked[: len(baselines)]] == baselines  # the references first, in order
    assert len({c.id for c in asked}) == len(asked)
    lows, highs = space.lows, space.highs
    for c in asked:
        assert space.repair(c.genome) == c.genome and np.all(lows <= c.genome) and np.all(c.genome <= highs)
        assert (c.pruning, c.partition) == space.decode(c.genome)
    # the same seed asks the same candidates
    again = make_searcher(name, space, OBJECTIVES, seed=3, **SETTINGS.get(name, {}))
    assert [c.genome for c in _drive(again, evaluator, rounds=4, fail_every=5)] == [c.genome for c in asked]
    # a state saved mid-run and loaded into a fresh searcher asks what the original asks next
    state = json.loads(json.dumps(searcher.state_dict()))
    restored = make_searcher(name, space, OBJECTIVES, seed=3, **SETTINGS.get(name, {}))
    restored.load_state_dict(state)
    assert [c.genome for c in restored.ask(3)] == [c.genome for c in searcher.ask(3)]
    # the front: feasible, non-dominated told results, failures left out
    front = searcher.front()
    assert front and all(t.feasible for t in front)
    points = np.array([t.values for t in front])
    assert non_dominated(points).all()


@pytest.mark.parametrize("name", searcher_names())
def test_every_searcher_keeps_infeasible_results_off_its_front(problem, name):
    graph, evaluator = problem
    space = _space(graph, "pipeline")
    unpruned = evaluator.evaluate(_candidate(space), OBJECTIVES).metrics["macs"]
    limit = Constraint("macs", 0.8 * unpruned)  # the unpruned baselines break it
    searcher = make_searcher(name, space, OBJECTIVES, [limit], seed=0, **SETTINGS.get(name, {}))
    asked = _drive(searcher, evaluator, rounds=5, constraints=[limit])
    front = searcher.front()
    assert len(asked) == 15 and all(t.violation == 0 for t in front)
    if front:  # what the front holds meets the limit, and nothing feasible told dominates it
        feasible = [e for e in (evaluator.evaluate(c, OBJECTIVES) for c in asked) if e.metrics["macs"] <= limit.bound]
        everything = minimized([e.values for e in feasible], OBJECTIVES)
        for t in front:
            assert not any(np.all(p <= t.values) and np.any(p < t.values) for p in everything)


def _candidate(space):
    from search.records import Candidate

    genome = space.baselines()[0]
    return Candidate(0, "ref", genome, *space.decode(genome))
