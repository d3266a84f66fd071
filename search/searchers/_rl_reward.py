"""How the rl searcher scores a batch of told results: advantages from a preference-conditioned Chebyshev
scalarisation, or from each result's hypervolume contribution (see `search.searchers.rl`).

A batch entry is the record the searcher keeps per told candidate: `w` (its preference), `values`
(minimisation values, None when failed or not finite), `v` (its constraint violation) and `id`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from search.base import Told
from search.pareto import Normalizer, hypervolume, non_dominated

__all__ = [
    "INFEASIBLE_MARGIN",
    "chebyshev_advantages",
    "chebyshev_scores",
    "contributions",
    "hypervolume_advantages",
    "usable",
]

INFEASIBLE_MARGIN = 0.1  # infeasible scores start this far above the worst feasible score

Batch = Sequence[dict[str, Any]]


def usable(told: Told) -> bool:
    """Complete with finite values and violation (a hand-built evaluation may carry inf or NaN)."""
    return told.values is not None and all(math.isfinite(v) for v in told.values) and math.isfinite(told.violation)


def chebyshev_advantages(batch: Batch, history: Sequence[Told], front: Sequence[Told], rho: float) -> list[float]:
    """Per result: the leave-one-out batch mean of scores under its preference minus its own score,
    standardised over the batch (larger is better)."""
    scores = chebyshev_scores(batch, history, front, rho)  # [i, j]: result j scored under result i's preference
    own = np.diag(scores).copy()
    n = len(batch)
    return _standardised((scores.sum(axis=1) - own) / (n - 1) - own)


def hypervolume_advantages(batch: Batch, history: Sequence[Told]) -> list[float]:
    """Per result: its hypervolume contribution to the front told before the batch, less the batch mean,
    standardised."""
    gain = contributions(batch, history)
    return _standardised(gain - gain.mean())


def _standardised(advantage: np.ndarray) -> list[float]:
    std = advantage.std()
    return (advantage / std if std > 1e-12 else np.zeros(len(advantage))).tolist()


def contributions(batch: Batch, history: Sequence[Told]) -> np.ndarray:
    """Each result's gain in hypervolume over the feasible front of everything told before this batch
    (objectives normalised by the told range, reference 1.1); a dominated result scores minus its
    additive distance to that front, an infeasible one below every feasible one, a failed one lowest."""
    told = [t for t in history if usable(t)]
    batch_ids = {r["id"] for r in batch}
    before = np.array([t.values for t in told if t.feasible and t.id not in batch_ids])
    if len(told) < 2:
        return np.zeros(len(batch))
    points = np.array([t.values for t in told])
    normalizer = Normalizer.from_points(points)
    front = normalizer(before[non_dominated(before)]) if len(before) else np.zeros((0, points.shape[1]))
    base = hypervolume(front) if len(front) else 0.0
    out = np.zeros(len(batch))
    for j, r in enumerate(batch):
        if r["values"] is None:
            out[j] = -3.0
            continue
        p = normalizer(np.asarray(r["values"], dtype=np.float64)[None, :])
        if r["v"] > 0:
            out[j] = -2.0 - min(1.0, r["v"])
            continue
        gain = hypervolume(np.vstack([front, p])) - base if len(front) else hypervolume(p)
        out[j] = gain if gain > 0 else -float(np.min(np.max(p - front, axis=1))) if len(front) else 0.0
    return out


def chebyshev_scores(batch: Batch, history: Sequence[Told], front: Sequence[Told], rho: float) -> np.ndarray:
    """Scores, smaller is better, of every result under every preference of the batch (`front`: the
    feasible non-dominated told results).

    Feasible results: augmented Chebyshev of the objectives normalised over all told results, from
    the best value (ideal; among feasible results once there are any) to the worst value on the
    current front (nadir; the worst value told where the front has no spread), so early poor results
    do not squash the objectives they were poor in. Infeasible results score above any feasible
    result told, more the larger their violation; failed results score as the worst result told."""
    failed = np.array([r["values"] is None for r in batch])
    told = [t for t in history if usable(t)]
    if failed.all() or not told:
        return np.zeros((len(batch), len(batch)))
    points = np.array([t.values for t in told])
    feasible = np.array([t.violation == 0 for t in told])
    low = points[feasible].min(axis=0) if feasible.any() else points.min(axis=0)
    high = points.max(axis=0)
    front = [t for t in front if usable(t)]
    nadir = np.array([t.values for t in front]).max(axis=0) if front else high
    span = np.where(nadir > low, nadir - low, np.where(high > low, high - low, 1.0))
    max_violation = max(t.violation for t in told)
    values = np.array([r["values"] if r["values"] is not None else high for r in batch])
    w = np.array([r["w"] for r in batch])
    weighted = w[:, None, :] * ((values - low) / span)[None, :, :]
    scores = weighted.max(axis=2) + rho * weighted.sum(axis=2)
    worst_feasible = (1 + rho) * float(((high - low) / span).max())
    violation = np.array([r["v"] if r["values"] is not None else 0.0 for r in batch])
    infeasible = violation > 0
    if infeasible.any():
        scores[:, infeasible] = worst_feasible + INFEASIBLE_MARGIN + violation[infeasible] / max_violation
    worst = worst_feasible + (INFEASIBLE_MARGIN + 1 if max_violation > 0 else 0.0)
    scores[:, failed] = worst
    return scores
