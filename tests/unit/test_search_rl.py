"""The reinforcement-learning searcher: it learns (beats random search on ZDT1 and DTLZ2), is seeded,
resumes exactly from JSON state with candidates in flight, handles integer genes, failed evaluations
and constraints, and leaves the global torch RNG alone."""

import json
import math

import numpy as np
import pytest
import torch

from decomp.errors import SearchError
from search.pareto import hypervolume
from search.problems import dtlz2, zdt1
from search.records import Constraint, Evaluation, Gene, Objective
from search.registry import SEARCHERS, make_searcher
from search.space import BoxSpace, Space


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The policy is tiny: on a busy 2-core machine torch's thread pool makes it ~15x slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _search(searcher, evaluate, budget, in_flight=4):
    """Ask `in_flight` at a time and tell them in reverse order; returns (candidate, evaluation) pairs."""
    done = []
    while len(done) < budget:
        asked = searcher.ask(in_flight)
        for c in reversed(asked):
            done.append((c, evaluate(c)))
            searcher.tell(c, done[-1][1])
    return done


def _problem_evaluator(problem):
    return lambda c: Evaluation.of(c.id, problem.evaluate(c.genome))


def _hypervolume(name, problem, seed, budget, **settings):
    searcher = make_searcher(name, problem.space, problem.objectives, seed=seed, **settings)
    done = _search(searcher, _problem_evaluator(problem), budget)
    return hypervolume(np.array([e.values for _, e in done]), problem.normalizer)


@pytest.mark.parametrize("reward", ["chebyshev", "hypervolume"])
@pytest.mark.parametrize("problem", [zdt1(10), dtlz2()], ids=["zdt1", "dtlz2"])
def test_rl_beats_random_search(problem, reward):
    rl = np.mean([_hypervolume("rl", problem, seed, 300, reward=reward) for seed in range(3)])
    random = np.mean([_hypervolume("random", problem, seed, 300) for seed in range(3)])
    assert rl > random + 0.1, (rl, random)


def test_same_seed_same_candidates_and_front():
    problem = zdt1(6)

    def run(seed):
        searcher = make_searcher("rl", problem.space, problem.objectives, seed=seed, batch=8)
        done = _search(searcher, _problem_evaluator(problem), 64)
        return [c.genome for c, _ in done], [t.genome for t in searcher.front()]

    genomes, front = run(3)
    assert len(set(genomes)) == len(genomes)
    assert run(3) == (genomes, front)
    assert run(4)[0] != genomes


def test_json_state_resumes_exactly_with_candidates_in_flight():
    problem = zdt1(5)
    evaluate = _problem_evaluator(problem)
    a = make_searcher("rl", problem.space, problem.objectives, seed=5, batch=8)
    _search(a, evaluate, 20)  # two updates and four results waiting for the next
    pending = a.ask(5)
    state = json.loads(json.dumps(a.state_dict()))
    b = make_searcher("rl", problem.space, problem.objectives, seed=0, batch=8)
    b.load_state_dict(state)
    assert b.updates == a.updates == 2
    for searcher in (a, b):  # results of candidates asked before the save arrive after it
        for c in pending:
            searcher.tell(c, evaluate(c))
    rest_a, rest_b = _search(a, evaluate, 24), _search(b, evaluate, 24)
    assert [(c.id, c.genome) for c, _ in rest_a] == [(c.id, c.genome) for c, _ in rest_b]
    assert a.updates == b.updates == 6
    assert json.dumps(a.state_dict()) == json.dumps(b.state_dict())


def test_state_from_another_space_is_a_clear_error():
    problem = zdt1(5)
    a = make_searcher("rl", problem.space, problem.objectives)
    b = make_searcher("rl", BoxSpace(7), problem.objectives)
    with pytest.raises(SearchError, match="same space"):
        b.load_state_dict(json.loads(json.dumps(a.state_dict())))


def test_integer_genes_categorical_and_wide_and_fixed():
    space = Space(
        [Gene("k", 0, 3, integer=True), Gene("n", 1, 100, integer=True), Gene("r", 0.0, 1.0), Gene("c", 2, 2)]
    )

    def evaluate(c):
        k, n, r, _ = c.genome
        off = abs(n - 50) / 25
        return Evaluation.of(c.id, [k + r + off, (3 - k) + (1 - r) + off])

    searcher = make_searcher("rl", space, [Objective("f1"), Objective("f2")], seed=1)
    done = _search(searcher, evaluate, 240)
    genomes = [c.genome for c, _ in done]
    assert all(isinstance(k, int) and 0 <= k <= 3 and isinstance(n, int) and 1 <= n <= 100 for k, n, _, _ in genomes)
    assert all(0.0 <= r <= 1.0 and fixed == 2 for _, _, r, fixed in genomes)
    assert {k for k, _, _, _ in genomes} == {0, 1, 2, 3}
    off = [abs(n - 50) for _, n, _, _ in genomes]
    assert np.mean(off[-64:]) < 0.5 * np.mean(off[:64])  # the wide integer gene learned its optimum


def test_failed_evaluations_do_not_stop_the_search_and_are_avoided():
    problem = zdt1(5)

    def evaluate(c):  # NaN where x0 > 0.6: the evaluation is failed
        f1, f2 = problem.evaluate(c.genome)
        return Evaluation.of(c.id, [f1, math.nan if c.genome[0] > 0.6 else f2], names=["f1", "f2"])

    searcher = make_searcher("rl", problem.space, problem.objectives, seed=2)
    done = _search(searcher, evaluate, 240)
    failed = [not e.ok for _, e in done]
    assert searcher.updates == 15 and searcher.front()
    assert np.mean(failed[-64:]) < 0.5 * np.mean(failed[:64])


def test_constraint_feasible_share_rises():
    problem = zdt1(6)

    def evaluate(c):  # g of ZDT1 <= 2.5: rare under uniform sampling (mean of five uniforms <= 1/6)
        g = 1 + 9 * float(np.mean(c.genome[1:]))
        return Evaluation.of(c.id, problem.evaluate(c.genome), [g])

    searcher = make_searcher("rl", problem.space, problem.objectives, [Constraint("g", 2.5)], seed=0)
    done = _search(searcher, evaluate, 240)
    feasible = [t.feasible for t in searcher.history]
    assert len(done) == 240
    assert np.mean(feasible[:48]) < 0.2 and np.mean(feasible[-48:]) > 0.8
    assert all(t.feasible for t in searcher.front())


def test_results_it_did_not_ask_for_join_the_history_only():
    problem = zdt1(4)
    evaluate = _problem_evaluator(problem)
    searcher = make_searcher("rl", problem.space, problem.objectives, batch=2)
    foreign = make_searcher("random", problem.space, problem.objectives).ask(1)[0]
    mine = searcher.ask(2)
    assert foreign.id == mine[0].id  # same id, another searcher's candidate
    searcher.tell(foreign, evaluate(foreign))
    assert len(searcher.history) == 1 and len(searcher.state_dict()["pending"]) == 2
    for c in mine:
        searcher.tell(c, evaluate(c))
    assert searcher.updates == 1 and not searcher.state_dict()["pending"]


def test_settings_are_checked_and_global_torch_rng_untouched():
    assert "rl" in SEARCHERS
    problem = zdt1(3)
    with pytest.raises(SearchError, match="batch must be >= 2"):
        make_searcher("rl", problem.space, problem.objectives, batch=1)
    with pytest.raises(SearchError, match="init_std"):
        make_searcher("rl", problem.space, problem.objectives, init_std=2.0)
    before = torch.random.get_rng_state()
    searcher = make_searcher("rl", problem.space, problem.objectives, batch=4)
    _search(searcher, _problem_evaluator(problem), 12)
    assert searcher.updates == 3
    assert torch.equal(before, torch.random.get_rng_state())
