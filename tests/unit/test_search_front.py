"""FrontTracker, checked against the Pareto utilities recomputed from scratch after every result."""

import math

import numpy as np
import pytest

from decomp.errors import SearchError
from search.front import FrontTracker
from search.pareto import Normalizer, hypervolume, minimized, non_dominated
from search.records import Constraint, Evaluation, Objective

OBJECTIVES = (Objective("latency_s"), Objective("accuracy", "maximize"), Objective("macs"))
CONSTRAINTS = (Constraint("memory", 1.0),)


def _random_results(seed: int, n: int) -> list[Evaluation]:
    """Complete, infeasible, failed and non-finite results, with duplicated points and ties."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        values = rng.integers(0, 6, size=3).astype(float) / 5  # a coarse grid: many ties and repeats
        kind = rng.choice(["ok", "ok", "ok", "infeasible", "failed", "nan"])
        if kind == "failed":
            out.append(Evaluation.failed(i, "worker died"))
        elif kind == "nan":  # built directly: complete, but not usable (the result store records it as failed)
            out.append(Evaluation(i, (math.nan, *values[1:]), (0.5,)))
        else:
            out.append(Evaluation(i, tuple(values), (2.0 if kind == "infeasible" else 0.5,)))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_front_and_hypervolume_match_a_recomputation_after_every_result(seed):
    results = _random_results(seed, 120)
    normalizer = Normalizer((0.0, -1.0, 0.0), (1.0, 0.0, 1.0))
    tracker = FrontTracker(OBJECTIVES, CONSTRAINTS, normalizer=normalizer)
    for k, evaluation in enumerate(results):
        before = len(tracker.front)
        joined = tracker.add(evaluation)
        seen = results[: k + 1]
        usable = [e for e in seen if e.ok and all(math.isfinite(v) for v in e.values)]
        feasible = [e for e in usable if e.constraints[0] <= 1.0]
        points = minimized([e.values for e in feasible], OBJECTIVES)
        front = points[non_dominated(points)]
        assert sorted(map(tuple, tracker.front)) == sorted(map(tuple, front))
        assert tracker.hypervolume == pytest.approx(hypervolume(front, normalizer) if len(front) else 0.0)
        assert (tracker.complete, tracker.failed, tracker.feasible) == (len(usable), k + 1 - len(usable), len(feasible))
        assert joined == (evaluation in feasible and any(tuple(p) == tuple(points[-1]) for p in front))
        assert joined or len(tracker.front) == before
        if len(front):
            best = front.min(axis=0) * np.array([o.sign for o in OBJECTIVES])
            assert tracker.best == {o.name: pytest.approx(v) for o, v in zip(OBJECTIVES, best, strict=True)}


def test_normalizer_is_fixed_from_the_first_complete_points():
    tracker = FrontTracker([Objective("a"), Objective("b", "maximize")], normalizer_points=3)
    values = [(1.0, 5.0), (3.0, 1.0), (2.0, 2.0), (10.0, 100.0)]
    tracker.add(Evaluation.failed(0, "boom"))
    for i, v in enumerate(values[:2], start=1):
        tracker.add(Evaluation(i, v))
    assert tracker.fix_normalizer() is None and tracker.hypervolume is None  # 2 of the 3 points so far
    fixed = tracker.fix_normalizer(at_least=2)
    assert fixed == Normalizer.from_points(minimized(values[:2], tracker.objectives))
    assert tracker.fix_normalizer(at_least=1) is None and tracker.normalizer is fixed  # fixed once
    for i, v in enumerate(values[2:], start=3):
        tracker.add(Evaluation(i, v))
    assert tracker.normalizer is fixed  # later points do not move it
    assert tracker.hypervolume == pytest.approx(hypervolume(tracker.front, fixed))
    assert tracker.best == {"a": 1.0, "b": 100.0}


def test_first_points_stop_at_normalizer_points():
    tracker = FrontTracker([Objective("a")], normalizer_points=2)
    for i, v in enumerate([1.0, 2.0, 50.0]):
        tracker.add(Evaluation(i, (v,)))
    assert tracker.fix_normalizer(at_least=1) == Normalizer((1.0,), (2.0,))


def test_a_stored_normalizer_replaces_the_cached_volume():
    tracker = FrontTracker([Objective("a"), Objective("b")])
    tracker.add(Evaluation(0, (0.5, 0.5)))
    wide, narrow = Normalizer((0.0, 0.0), (10.0, 10.0)), Normalizer((0.0, 0.0), (1.0, 1.0))
    tracker.normalizer = wide
    assert tracker.hypervolume == pytest.approx(hypervolume(np.array([[0.5, 0.5]]), wide))
    tracker.normalizer = narrow
    assert tracker.hypervolume == pytest.approx((1.1 - 0.5) ** 2)
    assert FrontTracker([Objective("a")], normalizer=narrow).hypervolume == 0.0  # no feasible point yet


def test_results_that_do_not_fit_are_errors():
    tracker = FrontTracker(OBJECTIVES, CONSTRAINTS)
    with pytest.raises(SearchError, match="has 2 values for 3 objectives"):
        tracker.add(Evaluation(0, (1.0, 2.0), (0.0,)))
    with pytest.raises(SearchError, match="0 constraint values for 1 constraints"):
        tracker.add(Evaluation(0, (1.0, 2.0, 3.0)))
    with pytest.raises(SearchError, match="at least one objective"):
        FrontTracker([])
