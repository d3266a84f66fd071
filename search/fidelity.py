"""Which candidates climb to a costlier evaluation: asynchronous successive halving over several objectives.

A candidate's measured objectives (accuracy) can be had at rising levels of cost and trust, e.g. after
re-estimating BatchNorm statistics, after a short fine-tune, after a full one. Fine-tuning every candidate
fully is what makes real searches unaffordable; successive halving spends it on the promising ones. ASHA
(Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) decides without waiting for
a level to fill: when a candidate finishes level l, it climbs to l + 1 if it ranks among the best
`max(1, n // reduction)` of the n results level l has seen so far (Optuna's `SuccessiveHalvingPruner` rule)
and fewer than that many have climbed from level l yet. The second condition is what holds the cost: a
searcher that converges proposes candidates better than most of those before them, and by rank alone nearly
every one would climb (measured: 83% of NSGA-II's candidates reached the top level of three). With it, at
most about 1 / reduction of the candidates reach each next level, whatever order they come in; the rank test
still keeps the poor ones from taking a place.

With several objectives "best" is the order NSGA-II uses: feasible before infeasible, infeasible by their
total violation, feasible by non-domination rank, then by crowding distance within the rank (spread out
before crowded), then by candidate id. Failed results never climb.

`Ladder` holds the results per level and which candidates climbed from each (a result at level l + 1 says
the candidate climbed from l), so a resumed driver rebuilds it by adding every result it has again. A `free`
result (a reference the caller measures at every level, e.g. the unpruned model) counts in the field but
takes no place, neither among the best nor among those that climbed.
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
        self._climbed: list[set[int]] = [set() for _ in range(levels)]  # level -> ids that climbed from it
        self._free: set[int] = set()

    def add(self, level: int, evaluation: Evaluation, free: bool = False, climbed: bool = False) -> None:
        """Record a candidate's result at `level` (again: the later one counts); `free`: it climbs outside the
        places (see the module docstring); `climbed`: it climbed from `level` already (a resumed run's
        candidate in flight at a higher level)."""
        self._check(level)
        if evaluation.ok:
            evaluation.check_shape(self.objectives, self.constraints)
        cid = evaluation.candidate_id
        self._results[level][cid] = evaluation
        if free:
            self._free.add(cid)
        if level > 0:
            self._climbed[level - 1].add(cid)
        if climbed and level < self.levels - 1:
            self._climbed[level].add(cid)

    def climbed(self, level: int) -> int:
        """How many candidates took a place to climb from `level` (free ones not counted)."""
        self._check(level)
        return len(self._climbed[level] - self._free)

    def seen(self, level: int) -> int:
        """How many results `level` holds."""
        self._check(level)
        return len(self._results[level])

    def climbs(self, level: int, candidate_id: int) -> bool:
        """Whether the candidate's result at `level` earns it the next level now; if so it takes its place
        (asking again for the same candidate says True again, taking no second place)."""
        self._check(level)
        results = self._results[level]
        mine = results.get(candidate_id)
        if level == self.levels - 1 or mine is None or not mine.ok:
            return False
        if candidate_id in self._climbed[level]:
            return True
        ok = [e for e in results.values() if e.ok]
        points = minimized([e.values for e in ok], self.objectives)
        violations = [sum(c.violation(v) for c, v in zip(self.constraints, e.constraints, strict=True)) for e in ok]
        order = best_first(points, violations)
        top = max(1, len(ok) // self.reduction)
        best = [ok[i].candidate_id for i in order if ok[i].candidate_id not in self._free][:top]
        if self.climbed(level) >= top or candidate_id not in best:
            return False
        self._climbed[level].add(candidate_id)
        return True

    def _check(self, level: int) -> None:
        if not 0 <= level < self.levels:
            raise SearchError(f"fidelity level {level} is outside 0..{self.levels - 1}")
