"""scikit-optimize's GP behind the ask/tell interface ("skopt").

`SkoptSearcher` fits `skopt.Optimizer` with a GP estimator on a scalarisation of the told results, ParEGO
style: at each ask, weights drawn from a Dirichlet with the searcher's generator, objectives normalised to
[0, 1] by the smallest and largest values told so far, augmented Chebyshev `max_i w_i f_i + rho sum_i w_i
f_i`; infeasible results score above every feasible one (1 + rho + 0.1 + violation / largest violation) and
failed ones get the worst score seen. As the scalarisation changes at every ask, a fresh Optimizer is
fitted on the told points each time: one GP fit (O(N^3) in the N points, capped by `max_points`) plus the
acquisition search over `n_points` random points per ask (about 0.1 s at 40 points, on one thread). The
first `n_initial_points` candidates are uniform draws. Within one `ask(n)` skopt spreads the batch with its
constant liar ("cl_min"); candidates in flight from earlier asks are not known to it. Everything it uses
is in the base state (history, generator, id counter), so state round trips are exact.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

from search.base import Searcher
from search.registry import register
from search.searchers._shared import derived_seed, one_thread
from search.settings import Settings, check_choice, check_number
from search.space import Genome

__all__ = ["SKOPT_ACQ_FUNCS", "SKOPT_ACQ_OPTIMIZERS", "SkoptSearcher", "SkoptSettings"]

SKOPT_ACQ_FUNCS = ("EI", "LCB", "PI", "gp_hedge")
SKOPT_ACQ_OPTIMIZERS = ("sampling", "lbfgs")


@dataclass(frozen=True)
class SkoptSettings(Settings):
    """The skopt searcher's settings."""

    n_initial_points: int = 10
    """Uniform draws before the GP takes over."""
    max_points: int = 100
    """Cap on the points the GP is fitted on: past it, the best half by the current scalarisation plus the
    most recent."""
    acq_func: str = "EI"
    """skopt's acquisition function ("gp_hedge" gains nothing here as every ask starts a fresh Optimizer)."""
    acq_optimizer: str = "sampling"
    """How the acquisition is optimised: "sampling" over `n_points` random points, or "lbfgs" (slower)."""
    n_points: int = 2000
    """Random points scored per ask."""
    n_restarts_optimizer: int = 2
    """Restarts of the GP's kernel fit (skopt's default)."""
    rho: float = 0.05
    """Augmentation weight of the Chebyshev scalarisation."""

    def __post_init__(self) -> None:
        check_choice("skopt", "acq_func", self.acq_func, SKOPT_ACQ_FUNCS)
        check_choice("skopt", "acq_optimizer", self.acq_optimizer, SKOPT_ACQ_OPTIMIZERS)
        least = {"n_initial_points": 1, "max_points": 2, "n_points": 1, "n_restarts_optimizer": 0}
        self._set(
            **{
                name: check_number(
                    "skopt",
                    name,
                    getattr(self, name),
                    f"an integer >= {low}",
                    lambda v, low=low: v >= low,
                    integer=True,
                )
                for name, low in least.items()
            },
            rho=check_number("skopt", "rho", self.rho, "a finite number >= 0", lambda v: v >= 0),
        )


@register
class SkoptSearcher(Searcher):
    """scikit-optimize's GP `Optimizer` on a random scalarisation of the objectives; see the module docstring."""

    name = "skopt"
    settings_class = SkoptSettings
    settings: SkoptSettings

    def _propose(self, n: int) -> list[Genome]:
        settings = self.settings
        if self._next_id < settings.n_initial_points or not any(t.values is not None for t in self.history):
            return [self.space.sample(self.rng) for _ in range(n)]
        m = len(self.objectives)
        weights = self.rng.dirichlet(np.ones(m)) if m > 1 else np.ones(1)
        keep = self._kept(scores := self.scores(weights))
        points = [self.space.free_values(self.history[k].genome) for k in keep]
        optimizer = self._optimizer(derived_seed(self.seed, self._next_id))
        with _quiet_skopt(), one_thread():
            optimizer.tell(points, [float(scores[k]) for k in keep])
            if n == 1:
                raw = [optimizer.ask()]
            elif settings.acq_optimizer == "sampling" and settings.acq_func != "gp_hedge":
                raw = self._batch(optimizer, n, min(float(scores[k]) for k in keep))
            else:  # constant liar: one refit per extra point
                raw = optimizer.ask(n_points=n, strategy="cl_min")
        return [self.space.fill(x) for x in raw]

    def _batch(self, optimizer, n: int, best: float) -> list[list]:
        """The `n` best distinct points of the acquisition over one random sample of `n_points`, from the one
        model fitted for this ask (a constant-liar batch refits the GP once per point: n times the cost)."""
        from skopt.acquisition import _gaussian_acquisition

        sample = optimizer.space.rvs(
            n_samples=self.settings.n_points, random_state=derived_seed(self.seed, 2**32 + self._next_id)
        )
        values = _gaussian_acquisition(
            optimizer.space.transform(sample), optimizer.models[-1], y_opt=best, acq_func=self.settings.acq_func
        )
        out, seen = [], set()
        for i in np.argsort(values, kind="stable"):
            key = tuple(sample[i])
            if key not in seen:
                seen.add(key)
                out.append(sample[i])
            if len(out) == n:
                break
        return out

    def scores(self, weights: np.ndarray) -> np.ndarray:
        """The told results scalarised with `weights` (smaller is better): feasible ones in [0, 1 + rho],
        infeasible ones above by their violation, failed ones at the worst score seen."""
        told, rho = self.history, self.settings.rho
        ok = [t.values is not None and all(math.isfinite(v) for v in t.values) for t in told]
        values = np.array([t.values for t, good in zip(told, ok, strict=True) if good], dtype=np.float64)
        scores = np.full(len(told), np.nan)
        if len(values):
            low, high = values.min(axis=0), values.max(axis=0)
            span = np.where(high > low, high - low, 1.0)
            violations = [t.violation for t, good in zip(told, ok, strict=True) if good and t.violation > 0]
            finite = [v for v in violations if math.isfinite(v)]
            largest = max(finite) if finite else 1.0
            for k, (t, good) in enumerate(zip(told, ok, strict=True)):
                if not good:
                    continue
                if t.violation > 0:
                    scores[k] = 1.0 + rho + 0.1 + min(1.0, t.violation / largest)
                else:
                    f = weights * (np.asarray(t.values) - low) / span
                    scores[k] = f.max() + rho * f.sum()
        worst = np.nanmax(scores) if np.any(np.isfinite(scores)) else 1.0 + rho + 1.1
        return np.where(np.isfinite(scores), scores, worst)

    def _kept(self, scores: np.ndarray) -> list[int]:
        """Indices of the told points to fit on: all, or past `max_points` the best half and the most recent."""
        most = self.settings.max_points
        if len(scores) <= most:
            return list(range(len(scores)))
        best = set(np.argsort(scores, kind="stable")[: most // 2].tolist())
        recent = [k for k in range(len(scores) - 1, -1, -1) if k not in best][: most - len(best)]
        return sorted(best | set(recent))

    def _optimizer(self, seed: int):
        from skopt import Optimizer
        from skopt.space import Integer, Real
        from skopt.utils import cook_estimator

        settings = self.settings
        dimensions = [
            Integer(int(g.low), int(g.high), name=g.name) if g.integer else Real(g.low, g.high, name=g.name)
            for g in self.space.free_genes
        ]
        estimator = cook_estimator(
            "GP", space=dimensions, random_state=seed, n_restarts_optimizer=settings.n_restarts_optimizer
        )
        return Optimizer(
            dimensions,
            base_estimator=estimator,
            n_initial_points=0,
            acq_func=settings.acq_func,
            acq_optimizer=settings.acq_optimizer,
            acq_optimizer_kwargs={"n_points": settings.n_points},
            random_state=seed,
        )


@contextlib.contextmanager
def _quiet_skopt():
    """skopt warns when its acquisition optimum was evaluated before (it then draws a random point) and the
    GP fit warns on kernel bounds: expected in a search, and not the user's to act on."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The objective has been evaluated at")
        warnings.filterwarnings("ignore", module="sklearn")
        yield
