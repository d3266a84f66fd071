"""Test problems with known Pareto fronts, to check that searchers converge: ZDT1 and DTLZ2 (Zitzler,
Deb and Thiele 2000; Deb, Thiele, Laumanns and Zitzler 2002), as pymoo defines them.

Both fronts lie in [0, 1] per objective, so the problems fix the normaliser to ideal 0, nadir 1 and the
true front's hypervolume against the reference point 1.1 has a closed form:
- ZDT1: front f2 = 1 - sqrt(f1), f1 in [0, 1]; the area under it is 1/3, so HV = 1.1^2 - 1/3.
- DTLZ2: front is the positive octant of the unit sphere; the octant's volume is pi/6, so for 3
  objectives HV = 1.1^3 - pi/6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from decomp.errors import SearchError
from search.pareto import Normalizer
from search.records import Objective
from search.space import BoxSpace

__all__ = ["PROBLEMS", "Problem", "dtlz2", "make_problem", "zdt1"]


@dataclass(frozen=True)
class Problem:
    """A box-constrained multi-objective test problem (all objectives minimised)."""

    name: str
    space: BoxSpace
    objectives: tuple[Objective, ...]
    normalizer: Normalizer
    true_hypervolume: float

    def evaluate(self, genome: Sequence[float]) -> tuple[float, ...]:
        x = np.asarray(genome, dtype=np.float64)
        return tuple(float(v) for v in _FUNCTIONS[self.name](x, len(self.objectives)))


def _zdt1(x: np.ndarray, m: int) -> np.ndarray:
    f1 = x[0]
    g = 1.0 + 9.0 * np.mean(x[1:])
    return np.array([f1, g * (1.0 - math.sqrt(f1 / g))])


def _dtlz2(x: np.ndarray, m: int) -> np.ndarray:
    g = np.sum((x[m - 1 :] - 0.5) ** 2)
    angles = x[: m - 1] * (math.pi / 2)
    f = np.full(m, 1.0 + g)
    for i in range(m):
        f[i] *= np.prod(np.cos(angles[: m - 1 - i]))
        if i > 0:
            f[i] *= math.sin(angles[m - 1 - i])
    return f


_FUNCTIONS = {"zdt1": _zdt1, "dtlz2": _dtlz2}


def zdt1(n: int = 30) -> Problem:
    """ZDT1 with `n` variables (pymoo: 30)."""
    if n < 2:
        raise SearchError(f"ZDT1 needs at least 2 variables, got {n}")
    return Problem(
        "zdt1",
        BoxSpace(n),
        (Objective("f1"), Objective("f2")),
        Normalizer((0.0, 0.0), (1.0, 1.0)),
        1.1**2 - 1.0 / 3.0,
    )


def dtlz2(m: int = 3, k: int = 10) -> Problem:
    """DTLZ2 with `m` objectives and m - 1 + k variables (pymoo: m = 3, k = 10 -> 12 variables)."""
    if m != 3:
        raise SearchError(f"DTLZ2's closed-form front volume is implemented for 3 objectives, got {m}")
    if k < 1:
        raise SearchError(f"DTLZ2 needs k >= 1, got {k}")
    return Problem(
        "dtlz2",
        BoxSpace(m - 1 + k),
        tuple(Objective(f"f{i + 1}") for i in range(m)),
        Normalizer((0.0,) * m, (1.0,) * m),
        1.1**3 - math.pi / 6.0,
    )


PROBLEMS = {"zdt1": zdt1, "dtlz2": dtlz2}


def make_problem(name: str, **kwargs) -> Problem:
    if name not in PROBLEMS:
        raise SearchError(f"unknown test problem {name!r}; valid: {', '.join(sorted(PROBLEMS))}")
    return PROBLEMS[name](**kwargs)
