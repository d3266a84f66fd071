"""A running summary of a study's results: counts, best values, the feasible front and its hypervolume.

A driver adds each evaluation as it is told (and a review replays a finished run's trials in order);
`FrontTracker` keeps the feasible non-dominated points in minimisation form, so its hypervolume after
each result is the study's progress curve. Hypervolumes are comparable only under one normaliser, so a
study fixes it once: from its first complete results (`fix_normalizer`) or from the one it stored
(`normalizer = ...`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decomp.errors import SearchError
from search.pareto import Normalizer, hypervolume
from search.records import Constraint, Evaluation, Objective

__all__ = ["NORMALIZER_POINTS", "FrontTracker"]

NORMALIZER_POINTS = 10  # complete results a study fixes its normaliser from, by default


class FrontTracker:
    """Evaluations added one by one: how many were complete, failed and feasible, the feasible front in
    minimisation form (`front`, one row per point, duplicates kept), the best value per objective in
    natural units and the front's hypervolume under the study's normaliser.

    A complete evaluation whose objective values are not all finite counts as failed, as the result store
    records it (`search.study.record_trial`)."""

    def __init__(
        self,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        normalizer: Normalizer | None = None,
        normalizer_points: int = NORMALIZER_POINTS,
    ) -> None:
        if not objectives:
            raise SearchError("a front tracker needs at least one objective")
        if normalizer_points < 1:
            raise SearchError(f"normalizer_points must be >= 1, got {normalizer_points}")
        self.objectives, self.constraints = tuple(objectives), tuple(constraints)
        self.normalizer_points = int(normalizer_points)
        self.complete = self.failed = self.feasible = 0
        self.front = np.zeros((0, len(self.objectives)))
        self._signs = np.array([o.sign for o in self.objectives])
        self._first: list[np.ndarray] = []  # the first complete points, for fix_normalizer
        self._normalizer = normalizer
        self._volume: float | None = None  # cached hypervolume of `front`, None when stale

    def add(self, evaluation: Evaluation) -> bool:
        """Count `evaluation`; True when it joined the feasible front (it may push others off it)."""
        evaluation.check_shape(self.objectives, self.constraints)
        point = np.asarray(evaluation.values, dtype=np.float64) * self._signs if evaluation.ok else None
        if point is None or not np.all(np.isfinite(point)):
            self.failed += 1
            return False
        self.complete += 1
        if len(self._first) < self.normalizer_points:
            self._first.append(point)
        if any(c.violation(v) > 0 for c, v in zip(self.constraints, evaluation.constraints, strict=True)):
            return False
        self.feasible += 1
        front = self.front
        if np.any(np.all(front <= point, axis=1) & np.any(front < point, axis=1)):
            return False  # dominated: the front and its hypervolume stay
        beaten = np.all(point <= front, axis=1) & np.any(point < front, axis=1)
        self.front = np.vstack([front[~beaten], point])
        self._volume = None
        return True

    @property
    def normalizer(self) -> Normalizer | None:
        """The normaliser hypervolumes are computed under (None until fixed or set)."""
        return self._normalizer

    @normalizer.setter
    def normalizer(self, normalizer: Normalizer | None) -> None:
        self._normalizer, self._volume = normalizer, None

    def fix_normalizer(self, at_least: int | None = None) -> Normalizer | None:
        """Fix the normaliser from the first complete points (up to `normalizer_points` of them) once there
        are `at_least` (default `normalizer_points`); return it when this call fixed it, else None (already
        fixed or set, or too few points yet). A driver stores what it returns with its study."""
        at_least = self.normalizer_points if at_least is None else at_least
        if self._normalizer is None and self._first and len(self._first) >= at_least:
            self.normalizer = Normalizer.from_points(np.array(self._first))
            return self._normalizer
        return None

    @property
    def best(self) -> dict[str, float]:
        """The best feasible value of each objective in its natural units (empty before a feasible one)."""
        if len(self.front) == 0:
            return {}
        best = self.front.min(axis=0) * self._signs
        return {o.name: float(v) for o, v in zip(self.objectives, best, strict=True)}

    @property
    def hypervolume(self) -> float | None:
        """Hypervolume of the feasible front under the normaliser (0 with no feasible point; None while
        there is no normaliser)."""
        if self._normalizer is None:
            return None
        if self._volume is None:
            self._volume = hypervolume(self.front, self._normalizer) if len(self.front) else 0.0
        return self._volume
