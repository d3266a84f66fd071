"""The fidelity ladder: asynchronous successive halving over several objectives."""

from __future__ import annotations

import numpy as np
import pytest

from decomp.errors import SearchError
from search.fidelity import Ladder, best_first
from search.pareto import non_dominated
from search.records import Constraint, Evaluation, Objective

ACC, MACS = Objective("accuracy", "maximize"), Objective("macs")


def result(cid: int, accuracy: float, macs: float, memory: float | None = None) -> Evaluation:
    return Evaluation.of(cid, [accuracy, macs], [] if memory is None else [memory])


def test_best_first_puts_the_front_first_then_by_violation():
    points = np.array([[1.0, 5.0], [2.0, 2.0], [5.0, 1.0], [3.0, 3.0], [0.0, 0.0], [0.5, 0.5]])
    violations = [0, 0, 0, 0, 2.0, 1.0]
    order = best_first(points, violations)
    front = set(np.flatnonzero(non_dominated(points[:4])))
    assert set(order[:3]) == front and order[3] == 3  # rank 0 before the dominated feasible row
    assert order[4:] == [5, 4]  # infeasible rows last, the smaller violation first


def test_within_a_rank_the_spread_out_come_before_the_crowded():
    points = np.array([[0.0, 4.0], [1.0, 3.0], [1.1, 2.9], [4.0, 0.0]])
    order = best_first(points, [0, 0, 0, 0])
    assert set(order[:2]) == {0, 3}  # the extremes (infinite crowding distance) first


def test_about_one_in_reduction_climbs():
    ladder = Ladder([ACC, MACS], [], levels=3, reduction=3)
    rng = np.random.default_rng(0)
    climbed = 0
    for cid in range(90):
        accuracy = float(rng.uniform(0.5, 1.0))
        ladder.add(0, result(cid, accuracy, 1.0))  # equal costs: accuracy alone decides
        climbed += ladder.climbs(0, cid)
    assert 20 <= climbed <= 45  # ASHA promotes ~1/3 (early candidates face a smaller field)
    assert ladder.seen(0) == 90


def test_a_converging_searcher_still_sends_only_about_one_in_reduction_up():
    # each candidate better than every one before it: by rank alone every one would climb
    ladder = Ladder([ACC, MACS], [], levels=3, reduction=3)
    climbed = 0
    for cid in range(90):
        ladder.add(0, result(cid, 0.5 + cid / 200, 1.0))
        climbed += ladder.climbs(0, cid)
    assert climbed == ladder.climbed(0) == 30
    assert ladder.climbs(0, 89) == (89 in ladder._climbed[0])  # asking again takes no second place
    assert ladder.climbed(0) == 30


def test_free_results_climb_outside_the_places_and_a_resumed_ladder_keeps_them():
    ladder = Ladder([ACC, MACS], [], levels=3, reduction=3)
    ladder.add(0, result(0, 0.99, 1.0), free=True)
    ladder.add(1, result(0, 0.99, 1.0), free=True)  # the reference climbed: no place taken
    assert ladder.climbed(0) == 0
    ladder.add(0, result(1, 0.98, 1.0))
    assert ladder.climbs(0, 1)  # 2 results: 1 place, which the better free one does not take
    ladder.add(0, result(2, 0.97, 1.0), climbed=True)  # a resumed candidate in flight at level 1
    assert ladder.climbed(0) == 2
    ladder.add(0, result(3, 0.999, 1.0))
    assert not ladder.climbs(0, 3)  # best so far, but 4 // 3 = 1 place and 2 are taken


def test_a_candidate_climbs_when_among_the_best_so_far_and_never_from_the_top():
    ladder = Ladder([ACC, MACS], [], levels=2, reduction=2)
    ladder.add(0, result(0, 0.9, 1.0))
    assert ladder.climbs(0, 0)  # the first one always climbs
    ladder.add(0, result(1, 0.5, 1.0))
    assert not ladder.climbs(0, 1)  # the best 1 of 2 is candidate 0
    ladder.add(0, result(2, 0.95, 1.0))
    assert not ladder.climbs(0, 2)  # among the best 1 of 3, but the one place is taken
    ladder.add(0, result(3, 0.96, 1.0))
    assert ladder.climbs(0, 3)  # 4 results: 2 places
    ladder.add(1, result(0, 0.97, 1.0))
    assert not ladder.climbs(1, 0)  # the top level


def test_failed_and_infeasible_results_do_not_climb_over_feasible_ones():
    ladder = Ladder([ACC, MACS], [Constraint("peak_memory", 10.0)], levels=2, reduction=2)
    ladder.add(0, result(0, 0.99, 1.0, memory=50.0))  # infeasible
    ladder.add(0, result(1, 0.60, 1.0, memory=5.0))
    ladder.add(0, Evaluation.failed(2, "out of memory"))
    assert ladder.climbs(0, 1) and not ladder.climbs(0, 0) and not ladder.climbs(0, 2)


def test_bad_ladders_and_levels_are_named():
    with pytest.raises(SearchError, match="at least one level"):
        Ladder([ACC], [], levels=0)
    with pytest.raises(SearchError, match="reduction factor must be an integer >= 2"):
        Ladder([ACC], [], levels=2, reduction=1)
    with pytest.raises(SearchError, match="level 2 is outside 0..1"):
        Ladder([ACC], [], levels=2).add(2, Evaluation.of(0, [0.5]))
