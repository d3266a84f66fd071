"""The greedy (NetAdapt-style) searcher on small problems: descent, trade-off walk, resume, errors."""

import json
import math

import numpy as np
import pytest

from decomp.errors import SearchError
from search.records import Constraint, Evaluation, Gene, Objective
from search.registry import make_searcher
from search.space import BoxSpace, Space


def _run(searcher, evaluate, budget, batch=3, constraints=None):
    told = []
    while len(told) < budget:
        for c in searcher.ask(batch):
            values = evaluate(c.genome)
            cons = constraints(c.genome) if constraints else ()
            searcher.tell(c, Evaluation.of(c.id, values, cons))
            told.append((c.genome, values))
    return told


def _bowl(genome):
    return (float(np.sum((np.asarray(genome) - 0.3) ** 2)),)


def test_single_objective_descent_reaches_the_bowl_bottom():
    s = make_searcher("greedy", BoxSpace(3), [Objective("f")], seed=0, step=0.05)
    told = _run(s, _bowl, 150)
    assert min(v[0] for _, v in told) < 0.01  # random search at 150 draws: ~0.02 on average


def test_walk_trades_the_resource_for_the_least_loss():
    # resource r = x0 + x1 (lower is better), quality loss q = 2 * x0 ** 2 + (1 - x1) ** 2 ... start at high resource
    space = Space([Gene("a", 0, 10, integer=True), Gene("b", 0, 10, integer=True)])
    space.start = lambda rng: (10, 10)

    def evaluate(g):
        a, b = g
        return (a + b, (10 - a) ** 2 * 3 + (10 - b) ** 2)  # lowering b costs less quality than lowering a

    s = make_searcher("greedy", space, [Objective("resource"), Objective("loss")], seed=0)
    told = _run(s, evaluate, 12, batch=1)
    genomes = [g for g, _ in told]
    assert genomes[:3] == [(10, 10), (9, 10), (10, 9)]  # the start, then its two moves down
    # (10, 9) loses less than (9, 10) for the same saving, so the next moves are its neighbours
    assert set(genomes[3:5]) == {(9, 9), (10, 8)}
    # and (9, 9) -> (9, 8) beats (8, 9): the walk lowers b again before a
    assert set(genomes[5:7]) == {(8, 9), (9, 8)} and set(genomes[7:9]) == {(8, 8), (9, 7)}


def test_same_seed_same_front_and_exact_resume():
    objectives = [Objective("f1"), Objective("f2")]

    def evaluate(g):
        return (g[0], 1 - math.sqrt(g[0]) + sum(g[1:]))

    a = make_searcher("greedy", BoxSpace(4), objectives, seed=3, moves_per_step=3)
    b = make_searcher("greedy", BoxSpace(4), objectives, seed=3, moves_per_step=3)
    assert [g for g, _ in _run(a, evaluate, 40)] == [g for g, _ in _run(b, evaluate, 40)]
    pending = a.ask(2)  # saved while two candidates are out
    restored = make_searcher("greedy", BoxSpace(4), objectives, seed=0, moves_per_step=3)
    restored.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for s in (a, restored):
        for c in pending:
            s.tell(c, Evaluation.of(c.id, evaluate(c.genome)))
    assert [(c.id, c.genome) for c in restored.ask(5)] == [(c.id, c.genome) for c in a.ask(5)]


def test_infeasible_moves_are_avoided_and_failures_survived():
    s = make_searcher("greedy", BoxSpace(2), [Objective("f")], [Constraint("x0", 0.5, ">=")], seed=1, step=0.1)
    told = []
    for _ in range(30):
        for c in s.ask(2):
            value = math.nan if c.genome[1] > 0.95 else c.genome[0] + c.genome[1]
            s.tell(c, Evaluation.of(c.id, [value], [c.genome[0]]))
            told.append((c.genome, value))
    front = s.front()
    assert front and all(t.genome[0] >= 0.5 for t in front)
    assert min(t.values[0] for t in front) < 0.8


def test_bad_settings_are_named():
    with pytest.raises(SearchError, match="choose one of f1, f2"):
        make_searcher("greedy", BoxSpace(2), [Objective("f1"), Objective("f2")], resource="latency")
    with pytest.raises(SearchError, match="step"):
        make_searcher("greedy", BoxSpace(2), [Objective("f1")], step=0)


def test_a_space_the_walks_have_exhausted_is_explored_not_recursed():
    """25 genomes, 60 asks: once every move of every walk was told, steps are walked without asking (before:
    endless recursion through restarts) and the asks explore at random; every ask is answered."""
    space = Space([Gene("a", 0, 4, integer=True), Gene("b", 0, 4, integer=True)])
    space.start = lambda rng: (4, 4)

    def evaluate(g):
        a, b = g
        return (a + b, (4 - a) ** 2 + (4 - b) ** 2)

    s = make_searcher("greedy", space, [Objective("size"), Objective("loss")], seed=0)
    told = _run(s, evaluate, 60, batch=1)
    assert len(told) == 60 and len({g for g, _ in told}) == 25  # the whole space, then repeats
    best = {k: min((4 - a) ** 2 + (4 - (k - a)) ** 2 for a in range(max(0, k - 4), min(4, k) + 1)) for k in range(9)}
    assert {tuple(t.values) for t in s.front()} == {(float(k), float(v)) for k, v in best.items()}
    state = json.loads(json.dumps(s.state_dict()))
    again = make_searcher("greedy", space, [Objective("size"), Objective("loss")], seed=0)
    again.load_state_dict(state)
    assert [c.genome for c in again.ask(3)] == [c.genome for c in s.ask(3)]  # exact resume
