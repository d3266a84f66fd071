"""The search core: records, spaces, the ask/tell base, the registry and the Pareto utilities."""

import json
import math

import numpy as np
import pytest

from decomp.errors import SearchError
from search.pareto import Normalizer, crowding_distance, hypervolume, minimized, non_dominated, pareto_ranks
from search.records import Candidate, Constraint, Evaluation, Gene, Objective, json_float
from search.registry import SEARCHERS, make_searcher
from search.space import BoxSpace, Space


def test_gene_clip_and_bounds():
    assert Gene("k", 0, 3, integer=True).clip(2.6) == 3
    assert Gene("r", 0.2, 0.8).clip(1.5) == 0.8
    with pytest.raises(SearchError, match="low <= high"):
        Gene("bad", 1, 0)
    with pytest.raises(SearchError, match="not finite"):
        Gene("r", 0, 1).clip(math.nan)


def test_space_with_nothing_to_search_is_an_error():
    with pytest.raises(SearchError, match="nothing to search"):
        Space([Gene("a", 1, 1), Gene("b", 0, 0, integer=True)])


def test_nan_value_makes_a_failed_evaluation_naming_it():
    e = Evaluation.of(3, [1.0, math.nan], names=["macs", "latency_s"])
    assert not e.ok and "latency_s" in e.message
    assert Evaluation.from_json(json.loads(json.dumps(e.to_json()))).values[1] != 1.0


def test_candidate_and_evaluation_json_round_trip():
    c = Candidate(4, "random", (0.5, 2))
    assert Candidate.from_json(json.loads(json.dumps(c.to_json()))) == c
    e = Evaluation.of(4, [1.0, 2.0], [0.5], {"extra": 3.0}, wall_time=0.1)
    assert Evaluation.from_json(json.loads(json.dumps(e.to_json()))) == e


def test_unknown_searcher_lists_the_valid_ones():
    with pytest.raises(SearchError, match="valid searchers: .*random"):
        make_searcher("nope", BoxSpace(2), [Objective("f")])
    assert "random" in SEARCHERS


def test_random_searcher_is_seeded_and_resumes_exactly():
    objectives = [Objective("f1"), Objective("f2", "maximize")]
    a = make_searcher("random", BoxSpace(3), objectives, seed=7)
    b = make_searcher("random", BoxSpace(3), objectives, seed=7)
    first = a.ask(3)
    assert [c.genome for c in first] == [c.genome for c in b.ask(3)]
    for c in first:
        a.tell(c, Evaluation.of(c.id, [sum(c.genome), c.genome[0]]))
    failed = a.ask(1)[0]
    a.tell(failed, Evaluation.failed(failed.id, "worker died"))
    restored = make_searcher("random", BoxSpace(3), objectives, seed=0)
    restored.load_state_dict(json.loads(json.dumps(a.state_dict(), allow_nan=False)))
    assert [(c.id, c.genome) for c in restored.ask(2)] == [(c.id, c.genome) for c in a.ask(2)]
    assert len(restored.history) == 4 and restored.history[-1].violation == math.inf


def test_told_values_are_minimized_and_constraints_violations():
    s = make_searcher("random", BoxSpace(2), [Objective("acc", "maximize")], [Constraint("mem", 10.0)])
    c = s.ask(1)[0]
    s.tell(c, Evaluation.of(c.id, [0.9], [12.0]))
    told = s.history[-1]
    assert told.values == (-0.9,) and told.violation == 2.0 and not told.feasible
    with pytest.raises(SearchError, match="1 constraint"):
        s.tell(c, Evaluation.of(c.id, [0.9]))


def test_pareto_utilities():
    points = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0], [1.0, 2.0]])
    assert non_dominated(points).tolist() == [True, True, False, True]
    assert pareto_ranks(points).tolist() == [0, 0, 1, 0]
    assert np.isinf(crowding_distance(points[:3])).sum() >= 2
    assert minimized([[1.0, 2.0]], [Objective("a"), Objective("b", "maximize")]).tolist() == [[1.0, -2.0]]
    # one point at the ideal of a unit box, reference 1.1: volume 1.1^2
    norm = Normalizer((0.0, 0.0), (1.0, 1.0))
    assert hypervolume(np.array([[0.0, 0.0]]), norm) == pytest.approx(1.21)
    assert hypervolume(np.array([[2.0, 0.0]]), norm) == 0.0
    assert hypervolume(np.array([[0.5, 0.5], [math.nan, 0.0]]), norm) == pytest.approx(0.36)
    with pytest.raises(SearchError, match="ideal < nadir"):
        Normalizer((0.0,), (0.0,))


def test_problem_fronts_match_their_closed_form_hypervolume():
    from search.problems import dtlz2, zdt1

    z = zdt1()
    f1 = np.linspace(0, 1, 4001)
    front = np.stack([f1, 1 - np.sqrt(f1)], axis=1)
    assert hypervolume(front, z.normalizer) == pytest.approx(z.true_hypervolume, rel=2e-3)
    # a point with the distance variables at 0 lies on the front
    assert z.evaluate([0.25] + [0.0] * 29) == pytest.approx((0.25, 0.5))
    d = dtlz2()
    rng = np.random.default_rng(0)
    genomes = np.concatenate([rng.uniform(size=(6000, 2)), np.full((6000, 10), 0.5)], axis=1)
    points = np.array([d.evaluate(g) for g in genomes])
    assert np.linalg.norm(points, axis=1) == pytest.approx(np.ones(6000))
    # a finite sample of the sphere falls a little short of the exact volume, never above it
    assert 0.97 * d.true_hypervolume < hypervolume(points, d.normalizer) < d.true_hypervolume


def test_unknown_searcher_setting_lists_the_valid_ones():
    with pytest.raises(SearchError, match="no setting .popsize.; valid: resource, step"):
        make_searcher("greedy", BoxSpace(2), [Objective("f")], popsize=3)


def test_free_genes_fill_back_into_a_genome():
    space = Space([Gene("a", 0.0, 1.0), Gene("fixed", 0.5, 0.5), Gene("k", 1, 4, integer=True), Gene("n", 2, 2, True)])
    assert space.free == (0, 2) and [g.name for g in space.free_genes] == ["a", "k"]
    assert space.fill([0.25, 3]) == [0.25, 0.5, 3, 2]
    assert space.free_values((0.25, 0.5, 3, 2)) == [0.25, 3] and isinstance(space.free_values((0, 0.5, 3.0, 2))[1], int)
    with pytest.raises(SearchError, match="got 1 values for the space's 2 free genes"):
        space.fill([0.25])


def test_json_float_keeps_strict_json():
    values = [1, 0.5, math.inf, -math.inf, math.nan]
    text = json.dumps([json_float(v) for v in values], allow_nan=False)
    back = [float(v) for v in json.loads(text)]
    assert back[:4] == [1.0, 0.5, math.inf, -math.inf] and math.isnan(back[4])
