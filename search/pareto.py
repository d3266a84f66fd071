"""Pareto utilities over objective matrices, with `moocore` doing the dominance and hypervolume work.

Every function takes points as an (n, m) array in *minimisation* form (use `minimized` to turn raw
values with their objectives' directions into that form). Hypervolume is computed after a fixed
normalisation (`Normalizer`): a study fixes its ideal and nadir bounds once, so hypervolumes of
different searchers and seeds are comparable; the reference point is 1.1 in every normalised
coordinate (points beyond it add nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import moocore
import numpy as np

from decomp.errors import SearchError
from search.records import Objective

__all__ = [
    "REFERENCE",
    "Normalizer",
    "crowding_distance",
    "hypervolume",
    "minimized",
    "non_dominated",
    "pareto_ranks",
]

REFERENCE = 1.1


def minimized(values: Sequence[Sequence[float]], objectives: Sequence[Objective]) -> np.ndarray:
    """Raw objective values (rows) as a smaller-is-better matrix."""
    points = np.asarray(values, dtype=np.float64).reshape(-1, len(objectives))
    return points * np.array([o.sign for o in objectives])


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows no other row dominates (duplicates of a non-dominated row are all kept)."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return moocore.is_nondominated(points, keep_weakly=True)


def pareto_ranks(points: np.ndarray) -> np.ndarray:
    """Non-domination rank per row: 0 for the front, 1 for the front once that is removed, ..."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(moocore.pareto_rank(points), dtype=int)


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance per row (within the set given; boundary rows get inf)."""
    points = np.asarray(points, dtype=np.float64)
    n, m = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        span = points[order[-1], j] - points[order[0], j]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (points[order[2:], j] - points[order[:-2], j]) / span
    return distance


@dataclass(frozen=True)
class Normalizer:
    """Maps minimisation points to [0, 1] per objective: `ideal` -> 0, `nadir` -> 1."""

    ideal: tuple[float, ...]
    nadir: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.ideal) != len(self.nadir):
            raise SearchError("normalizer: ideal and nadir need one value per objective")
        for i, (lo, hi) in enumerate(zip(self.ideal, self.nadir, strict=True)):
            if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
                raise SearchError(f"normalizer: objective {i} needs finite ideal < nadir, got {lo} and {hi}")

    @classmethod
    def from_points(cls, points: np.ndarray, margin: float = 0.0) -> Normalizer:
        """Bounds from the given points (e.g. a random sample fixed at the start of a study), widened by
        `margin` times the span on each side; objectives with no spread get a span of 1."""
        points = np.asarray(points, dtype=np.float64)
        if len(points) == 0 or not np.all(np.isfinite(points)):
            raise SearchError("normalizer: need at least one point, all finite")
        lo, hi = points.min(axis=0), points.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return cls(tuple(lo - margin * span), tuple(lo - margin * span + (1 + 2 * margin) * span))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        lo, hi = np.array(self.ideal), np.array(self.nadir)
        return (points - lo) / (hi - lo)

    def to_json(self) -> dict:
        return {"ideal": list(self.ideal), "nadir": list(self.nadir)}

    @classmethod
    def from_json(cls, data: dict) -> Normalizer:
        return cls(tuple(data["ideal"]), tuple(data["nadir"]))


def hypervolume(points: np.ndarray, normalizer: Normalizer | None = None, reference: float = REFERENCE) -> float:
    """Hypervolume of minimisation `points` (normalised first when a normalizer is given) against the
    reference point `reference` in every coordinate. Non-finite rows are ignored."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2:
        raise SearchError(f"hypervolume needs an (n, m) matrix, got shape {points.shape}")
    points = points[np.all(np.isfinite(points), axis=1)]
    if normalizer is not None:
        points = normalizer(points)
    points = points[np.all(points < reference, axis=1)]
    if len(points) == 0:
        return 0.0
    return float(moocore.hypervolume(points, ref=np.full(points.shape[1], reference)))
