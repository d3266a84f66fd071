"""Which candidates climb to a costlier evaluation: asynchronous successive halving over several objectives.

A candidate's measured objectives (accuracy) can be had at rising levels of cost and trust, e.g. after
re-estimating BatchNorm statistics, after a short fine-tune, after a full one. Fine-tuning every candidate
fully is what makes real searches unaffordable; successive halving spends it on the promising ones. ASHA
(Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) decides without waiting for
a level to fill: when a candidate finishes level l, it climbs to l + 1 if it ranks among the best
`max(1, n // reduction)` of the n results level l has seen so far (Optuna's `SuccessiveHalvingPruner` rule).
Early candidates climb easily and later ones must beat a growing field, so about 1 / reduction of the
candidates reach each next level.

With several objectives "best" is the order NSGA-II uses: feasible before infeasible, infeasible by their
total violation, feasible by non-domination rank, then by crowding distance within the rank (spread out
before crowded), then by candidate id. Failed results never climb.

`Ladder` holds the results per level; it is pure policy over `Evaluation`s and keeps no other state, so a
resumed driver rebuilds it by adding every result it has again.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decomp.errors import SearchError
from search.pareto import crowding_distance, minimized, pareto_ranks
from search.records import Constraint, Evaluation, Objective

__all__ = ["Ladder", "best_first"]


def best_first(points: np.ndarray, violations: Sequence[float]) -> list[int]:
    """Row indices of `points` (minimisation form) from best to worst: feasible rows (violation 0) by
    non-domination rank, then crowding distance within the rank (larger first), then row; infeasible rows
    after them by violation, then row."""
    points = np.asarray(points, dtype=np.float64)
    violations = np.asarray(violations, dtype=np.float64)
    feasible = np.flatnonzero(violations == 0)
    order: list[int] = []
    if len(feasible):
        ranks = pareto_ranks(points[feasible])
        crowding = np.zeros(len(feasible))
        for rank in np.unique(ranks):
            members = np.flatnonzero(ranks == rank)
            crowding[members] = crowding_distance(points[feasible[members]])
        order = [int(feasible[i]) for i in sorted(range(len(feasible)), key=lambda i: (ranks[i], -crowding[i], i))]
    infeasible = np.flatnonzero(violations != 0)
    order += [int(i) for i in sorted(infeasible, key=lambda i: (violations[i], i))]
    return order


class Ladder:
    """Results per fidelity level and the ASHA promotion rule (see the module docstring). `levels`: how
    many there are (the last is the top: nothing climbs from it); `reduction`: about 1 / reduction of the
    candidates climb from each level."""

    def __init__(
        self, objectives: Sequence[Objective], constraints: Sequence[Constraint], levels: int, reduction: int = 3
    ) -> None:
        if levels < 1:
            raise SearchError(f"a fidelity ladder needs at least one level, got {levels}")
        if reduction < 2:
            raise SearchError(f"the reduction factor must be an integer >= 2, got {reduction}")
        self.objectives, self.constraints = tuple(objectives), tuple(constraints)
        self.levels, self.reduction = levels, reduction
        self._results: list[dict[int, Evaluation]] = [{} for _ in range(levels)]

    def add(self, level: int, evaluation: Evaluation) -> None:
        """Record a candidate's result at `level` (again: the later one counts)."""
        self._check(level)
        if evaluation.ok:
            evaluation.check_shape(self.objectives, self.constraints)
        self._results[level][evaluation.candidate_id] = evaluation

    def seen(self, level: int) -> int:
        """How many results `level` holds."""
        self._check(level)
        return len(self._results[level])

    def climbs(self, level: int, candidate_id: int) -> bool:
        """Whether the candidate's result at `level` earns it the next level now."""
        self._check(level)
        results = self._results[level]
        mine = results.get(candidate_id)
        if level == self.levels - 1 or mine is None or not mine.ok:
            return False
        ok = [e for e in results.values() if e.ok]
        points = minimized([e.values for e in ok], self.objectives)
        violations = [sum(c.violation(v) for c, v in zip(self.constraints, e.constraints, strict=True)) for e in ok]
        order = best_first(points, violations)
        top = max(1, len(ok) // self.reduction)
        return any(ok[i].candidate_id == candidate_id for i in order[:top])

    def _check(self, level: int) -> None:
        if not 0 <= level < self.levels:
            raise SearchError(f"fidelity level {level} is outside 0..{self.levels - 1}")
