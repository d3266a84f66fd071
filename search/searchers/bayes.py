"""Bayesian searchers: Optuna's samplers over ask/tell ("optuna") and scikit-optimize's GP ("skopt").

`OptunaSearcher` drives one of Optuna's samplers (`sampler`: "tpe" (default), "gp" or "nsga2"; any other
setting goes to the sampler's constructor, e.g. `n_startup_trials`) through `study.ask` / `add_trial` on a
private in-memory study whose directions are all "minimize" over the searcher's minimisation values.
Constraints reach the sampler natively: every told trial carries one Optuna constraint value per constraint
(the signed excess over its bound, <= 0 when satisfied, Optuna's convention), which Optuna 5's samplers
read from the trial itself (`Trial.set_constraint` / `create_trial(constraints=...)`; the deprecated
`constraints_func` is not needed). How asks stay exact across a save and restore:

- the sampler is built afresh for every asked trial, seeded from (seed, candidate id), so no hidden sampler
  state (random generator, GP warm starts, search-space caches) carries over from one ask to the next: each
  ask depends only on the seed, the id and the trials in the study. The relative search space, which a
  fresh sampler would re-derive from every trial (O(trials x genes) per ask), is answered from the genes
  (`_KnownSpace`); it is what Optuna would derive, as every told trial has exactly those distributions;
- asked trials are *placeholders*: they stay RUNNING only within one `ask(n)` call (so a batch is spread out
  by the samplers' constant-liar handling) and are then marked FAIL, which every sampler ignores. A told
  result is added as a new trial that carries its placeholder's system attributes (NSGA-II's generation,
  say). So no asked-but-untold trial is ever left RUNNING: nothing lingers to push the sampler away from a
  region after a restore, or when a driver drops a candidate it will never tell. The price: candidates
  still in flight from an earlier `ask` are not shown to the sampler (per-id seeding keeps the draws apart);
- `state_dict()` keeps the sequence of trials (placeholder or told, with their system attributes) and the
  study's system attributes (NSGA-II's parent cache); `load_state_dict()` replays it into a fresh study with
  `add_trial(create_trial(...))`, which gives the same trials, numbers and ids as the original, so the
  restored searcher asks the same candidates.

Told results the searcher did not ask (asked before a restore, or by another searcher) are accepted: they
are added with no placeholder attributes. Failed evaluations become FAIL trials (Optuna's samplers skip
them). Cost per ask: TPE and NSGA-II are linear in the trials told (about 10-70 ms at 1,000 trials on a
shared 2-core machine; multi-objective TPE more once the front holds hundreds of points); the GP sampler
refits its GPs at each ask (about a second at tens of trials), on one thread (`_one_thread`).

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
import inspect
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from decomp.errors import SearchError
from search.base import Searcher, Told, register
from search.records import Candidate, Constraint, Evaluation, Gene, Objective
from search.space import Genome, Space
from search.study import gene_distribution

__all__ = ["OPTUNA_SAMPLERS", "OptunaSearcher", "SkoptSearcher"]

OPTUNA_SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "gp": optuna.samplers.GPSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
}

# Our defaults where Optuna's do not suit this use: TPE models the genes jointly (Optuna turns multivariate
# TPE off for several objectives; on ZDT1/DTLZ2 the joint model converges much faster).
_SAMPLER_DEFAULTS: dict[str, dict[str, Any]] = {"tpe": {"multivariate": True}, "gp": {}, "nsga2": {}}

# Sampler arguments the searcher sets itself.
_MANAGED = {
    "seed": "the sampler is seeded from the searcher's seed and the candidate id; pass seed= to the searcher",
    "constraints_func": "constraints come from the searcher's constraints; each told trial carries its values",
}

_STUDY_NAME = "decomp-searcher"


def _derived_seed(seed: int, key: int) -> int:
    """A 32-bit seed that depends only on (seed, key): each ask is reproducible on its own."""
    return int(np.random.SeedSequence([int(seed), int(key)]).generate_state(1)[0])


@contextlib.contextmanager
def _quiet_optuna():
    """Silence Optuna's "new study created" line for the searcher's private study (not the user's)."""
    logger = logging.getLogger("optuna")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _one_thread(torch_too: bool = False):
    """Run a small model fit on one thread. The GP fits here are on matrices of at most a few hundred rows,
    where BLAS (and torch) threads only add overhead, and on a busy machine they spin: measured on a shared
    2-core machine, skopt's 40-point fits ran 5x faster and Optuna's GP sampler 3x faster on one thread, with
    identical results. The limits are process-wide while they last and are restored after the ask."""
    try:
        from threadpoolctl import threadpool_limits  # scikit-learn's dependency
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        limits: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        limits = threadpool_limits(1)
    torch = None
    if torch_too:
        import torch
    threads = torch.get_num_threads() if torch is not None else 0
    with limits:
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(threads)


def _constraint_excess(constraint: Constraint, value: float) -> float:
    """Signed distance past the bound: <= 0 when satisfied (Optuna's convention), > 0 by how much it is not.
    Unlike the clipped violation it keeps a slope on the feasible side, which the GP sampler models."""
    excess = value - constraint.bound if constraint.sense == "<=" else constraint.bound - value
    return float(excess)


@register
class OptunaSearcher(Searcher):
    """One of Optuna's samplers (TPE, GP, NSGA-II) behind the ask/tell interface; see the module docstring."""

    name = "optuna"

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        seed: int = 0,
        sampler: str = "tpe",
        **sampler_settings: Any,
    ):
        super().__init__(space, objectives, constraints, seed)
        if sampler not in OPTUNA_SAMPLERS:
            raise SearchError(
                f"unknown optuna sampler {sampler!r}; valid samplers: {', '.join(OPTUNA_SAMPLERS)} "
                "(set it with sampler=...)"
            )
        self.sampler_name = sampler
        self._sampler_class = OPTUNA_SAMPLERS[sampler]
        self.sampler_settings = {**_SAMPLER_DEFAULTS[sampler], **_check_settings(sampler, sampler_settings)}
        try:
            self._make_sampler(0)
        except (TypeError, ValueError) as error:
            raise SearchError(
                f"optuna sampler {sampler!r} rejected its settings {sampler_settings}: {error}"
            ) from error
        self._free = tuple(g for g in space.genes if not g.fixed)
        self._distributions = {g.name: gene_distribution(g) for g in self._free}
        self._new_study()

    # -- the private study ---------------------------------------------------------------------------

    def _new_study(self) -> None:
        """A fresh in-memory study (minimise every value) and an empty trial log."""
        self._storage = optuna.storages.InMemoryStorage()
        with _quiet_optuna():
            self._study_id = self._storage.create_new_study(
                [StudyDirection.MINIMIZE] * len(self.objectives), _STUDY_NAME
            )
        self._study = optuna.load_study(study_name=_STUDY_NAME, storage=self._storage)
        # One entry per trial of the study, in order: ["asked", candidate id, system attrs] for a placeholder,
        # ["told", index into history, system attrs, constraint values or None] for a told result.
        self._log: list[list[Any]] = []
        self._asked: dict[int, int] = {}  # candidate id -> index in _log of its placeholder, until told
        self._n_complete = 0  # COMPLETE trials in the study

    def _make_sampler(self, key: int) -> optuna.samplers.BaseSampler:
        return self._sampler_class(seed=_derived_seed(self.seed, key), **self.sampler_settings)

    def _relative_space(self) -> dict[str, BaseDistribution] | None:
        """What the sampler's own `infer_relative_search_space` would answer, without walking every trial:
        every told trial has exactly the free genes' distributions, so Optuna's intersection search space is
        those genes (sorted by name, as Optuna sorts them) once a trial is complete, and empty before. None
        where the sampler must be asked (grouped TPE keeps state from it)."""
        settings = self.sampler_settings
        if self.sampler_name == "tpe":
            if settings.get("group"):
                return None
            multivariate = settings.get("multivariate")
            if not (len(self.objectives) == 1 if multivariate is None else multivariate):
                return {}
        if self._n_complete == 0:
            return {}
        return dict(sorted(self._distributions.items()))

    def _trial_system_attrs(self, number: int) -> dict[str, Any]:
        trial_id = self._storage.get_trial_id_from_study_id_trial_number(self._study_id, number)
        return dict(self._storage.get_trial_system_attrs(trial_id))

    def _add_placeholder(self, candidate_id: int, attrs: dict[str, Any]) -> None:
        """Replay of a placeholder (a FAIL trial with its ask-time system attributes)."""
        self._study.add_trial(
            create_trial(state=TrialState.FAIL, system_attrs=dict(attrs), user_attrs=_placeholder_attrs(candidate_id))
        )
        self._asked[candidate_id] = len(self._log)
        self._log.append(["asked", candidate_id, attrs])

    def _add_told(self, index: int, attrs: dict[str, Any], constraint_values: list[float] | None) -> None:
        """Add told result `history[index]` as a trial carrying `attrs` (from its placeholder, if any)."""
        told = self.history[index]
        usable = (
            told.values is not None
            and all(math.isfinite(v) for v in told.values)
            and (constraint_values is None or all(math.isfinite(v) for v in constraint_values))
        )
        params = {g.name: _param(g, told.genome[i]) for i, g in enumerate(self.space.genes) if not g.fixed}
        try:
            trial = create_trial(
                state=TrialState.COMPLETE if usable else TrialState.FAIL,
                user_attrs={"candidate_id": told.id},
                values=list(told.values) if usable else None,
                params=params,
                distributions=self._distributions,
                system_attrs=dict(attrs),  # create_trial adds the constraint keys to the dict it is given
                constraints=(
                    {str(i): v for i, v in enumerate(constraint_values)} if usable and constraint_values else None
                ),
            )
        except ValueError as error:
            raise SearchError(
                f"candidate {told.id}: genome {list(told.genome)} does not fit the search space ({error}); "
                "tell only candidates asked from a searcher over this space"
            ) from error
        self._study.add_trial(trial)
        self._n_complete += usable
        self._log.append(["told", index, attrs, constraint_values])

    # -- Searcher hooks ------------------------------------------------------------------------------

    def _propose(self, n: int) -> list[Genome]:
        live, genomes = [], []
        threads = _one_thread(torch_too=True) if self.sampler_name == "gp" else contextlib.nullcontext()
        try:
            with threads:
                for i in range(n):
                    candidate_id = self._next_id + i
                    self._study.sampler = _KnownSpace(self._make_sampler(candidate_id), self._relative_space())
                    trial = self._study.ask(self._distributions)
                    for key, value in _placeholder_attrs(candidate_id).items():
                        trial.set_user_attr(key, value)
                    live.append((candidate_id, trial))
                    genomes.append(self._genome(trial.params))
        finally:
            # Placeholders are finished as FAIL once the batch is drawn: see the module docstring.
            for candidate_id, trial in live:
                self._study.tell(trial, state=TrialState.FAIL)
                self._asked[candidate_id] = len(self._log)
                self._log.append(["asked", candidate_id, self._trial_system_attrs(trial.number)])
        return genomes

    def _learn(self, candidate: Candidate, evaluation: Evaluation, told: Told) -> None:
        placeholder = self._asked.pop(candidate.id, None)
        attrs = {} if placeholder is None else dict(self._log[placeholder][2])
        constraint_values = None
        if evaluation.ok and self.constraints:
            constraint_values = [
                _constraint_excess(c, v) for c, v in zip(self.constraints, evaluation.constraints, strict=True)
            ]
        self._add_told(len(self.history) - 1, attrs, constraint_values)

    def _state(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler_name,
            "trials": [list(entry) for entry in self._log],
            "study_attrs": dict(self._storage.get_study_system_attrs(self._study_id)),
        }

    def _load(self, state: dict[str, Any]) -> None:
        if state.get("sampler") != self.sampler_name:
            raise SearchError(
                f"this optuna searcher state was saved with sampler {state.get('sampler')!r}, not "
                f"{self.sampler_name!r}; resume with sampler={state.get('sampler')!r}"
            )
        self._new_study()
        for entry in state["trials"]:
            if entry[0] == "asked":
                self._add_placeholder(int(entry[1]), dict(entry[2]))
            else:
                self._asked.pop(self.history[int(entry[1])].id, None)
                self._add_told(int(entry[1]), dict(entry[2]), entry[3])
        for key, value in state["study_attrs"].items():
            self._storage.set_study_system_attr(self._study_id, key, value)

    # -- helpers ---------------------------------------------------------------------------------------

    def _genome(self, params: dict[str, Any]) -> list[float | int]:
        return [_fixed_value(g) if g.fixed else params[g.name] for g in self.space.genes]


class _KnownSpace(optuna.samplers.BaseSampler):
    """Delegates everything to `inner` but answers the relative search space itself (when `space` is not
    None). Optuna's samplers derive it by intersecting the distributions of every complete trial; a sampler
    built afresh for each ask has no cache of that, which made each ask O(trials x genes) and dominated long
    runs (NSGA-II spent 70% of its time there at 300 trials)."""

    def __init__(self, inner: optuna.samplers.BaseSampler, space: dict[str, BaseDistribution] | None):
        self._inner, self._space = inner, space

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        if self._space is None:
            return self._inner.infer_relative_search_space(study, trial)
        return dict(self._space)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def _placeholder_attrs(candidate_id: int) -> dict[str, Any]:
    """User attributes that mark a placeholder in the private study (for whoever inspects it)."""
    return {"candidate_id": candidate_id, "placeholder": True}


def _param(gene: Gene, value: float | int) -> float | int:
    return int(value) if gene.integer else float(value)


def _fixed_value(gene: Gene) -> float | int:
    return int(gene.low) if gene.integer else float(gene.low)


def _check_settings(sampler: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings, or an error naming the ones the sampler does not take and listing those it does."""
    for key, why in _MANAGED.items():
        if key in settings:
            raise SearchError(f"optuna searcher: do not set {key!r}: {why}")
    parameters = inspect.signature(OPTUNA_SAMPLERS[sampler].__init__).parameters
    valid = sorted(
        p
        for p, spec in parameters.items()
        if p != "self" and p not in _MANAGED and spec.kind in (spec.KEYWORD_ONLY, spec.POSITIONAL_OR_KEYWORD)
    )
    unknown = sorted(set(settings) - set(valid))
    if unknown:
        raise SearchError(
            f"optuna sampler {sampler!r} has no setting {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}"
        )
    return dict(settings)


SKOPT_ACQ_FUNCS = ("EI", "LCB", "PI", "gp_hedge")
SKOPT_ACQ_OPTIMIZERS = ("sampling", "lbfgs")


@register
class SkoptSearcher(Searcher):
    """scikit-optimize's GP `Optimizer` on a random scalarisation of the objectives; see the module docstring.

    Settings: `n_initial_points` uniform draws first (default 10); `max_points` cap on the points the GP is
    fitted on (default 100: the best half by the current scalarisation plus the most recent); `acq_func`
    (default "EI"; "gp_hedge" gains nothing here as every ask starts a fresh Optimizer); `acq_optimizer`
    ("sampling", default, or "lbfgs", slower) with `n_points` random points scored per ask (default 2000);
    `n_restarts_optimizer` for the GP's kernel fit (default 2, skopt's); `rho`, the augmentation weight of
    the Chebyshev scalarisation (default 0.05).
    """

    name = "skopt"

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        seed: int = 0,
        n_initial_points: int = 10,
        max_points: int = 100,
        acq_func: str = "EI",
        acq_optimizer: str = "sampling",
        n_points: int = 2000,
        n_restarts_optimizer: int = 2,
        rho: float = 0.05,
    ):
        super().__init__(space, objectives, constraints, seed)
        if acq_func not in SKOPT_ACQ_FUNCS:
            raise SearchError(f"skopt searcher: unknown acq_func {acq_func!r}; valid: {', '.join(SKOPT_ACQ_FUNCS)}")
        if acq_optimizer not in SKOPT_ACQ_OPTIMIZERS:
            raise SearchError(
                f"skopt searcher: unknown acq_optimizer {acq_optimizer!r}; valid: {', '.join(SKOPT_ACQ_OPTIMIZERS)}"
            )
        for setting, value, least in (
            ("n_initial_points", n_initial_points, 1),
            ("max_points", max_points, 2),
            ("n_points", n_points, 1),
            ("n_restarts_optimizer", n_restarts_optimizer, 0),
        ):
            if int(value) != value or value < least:
                raise SearchError(f"skopt searcher: {setting} must be an integer >= {least}, got {value!r}")
        if not (math.isfinite(rho) and rho >= 0):
            raise SearchError(f"skopt searcher: rho must be a finite number >= 0, got {rho!r}")
        self.n_initial_points = int(n_initial_points)
        self.max_points = int(max_points)
        self.acq_func = acq_func
        self.acq_optimizer = acq_optimizer
        self.n_points = int(n_points)
        self.n_restarts_optimizer = int(n_restarts_optimizer)
        self.rho = float(rho)
        self._free = tuple(i for i, g in enumerate(space.genes) if not g.fixed)

    def _propose(self, n: int) -> list[Genome]:
        if self._next_id < self.n_initial_points or not any(t.values is not None for t in self.history):
            return [self.space.sample(self.rng) for _ in range(n)]
        m = len(self.objectives)
        weights = self.rng.dirichlet(np.ones(m)) if m > 1 else np.ones(1)
        keep = self._kept(scores := self.scores(weights))
        points = [[_param(self.space.genes[i], self.history[k].genome[i]) for i in self._free] for k in keep]
        optimizer = self._optimizer(_derived_seed(self.seed, self._next_id))
        with _quiet_skopt(), _one_thread():
            optimizer.tell(points, [float(scores[k]) for k in keep])
            if n == 1:
                raw = [optimizer.ask()]
            elif self.acq_optimizer == "sampling" and self.acq_func != "gp_hedge":
                raw = self._batch(optimizer, n, min(float(scores[k]) for k in keep))
            else:  # constant liar: one refit per extra point
                raw = optimizer.ask(n_points=n, strategy="cl_min")
        return [self._genome(x) for x in raw]

    def _batch(self, optimizer, n: int, best: float) -> list[list]:
        """The `n` best distinct points of the acquisition over one random sample of `n_points`, from the one
        model fitted for this ask (a constant-liar batch refits the GP once per point: n times the cost)."""
        from skopt.acquisition import _gaussian_acquisition

        sample = optimizer.space.rvs(
            n_samples=self.n_points, random_state=_derived_seed(self.seed, 2**32 + self._next_id)
        )
        values = _gaussian_acquisition(
            optimizer.space.transform(sample), optimizer.models[-1], y_opt=best, acq_func=self.acq_func
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
        told = self.history
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
                    scores[k] = 1.0 + self.rho + 0.1 + min(1.0, t.violation / largest)
                else:
                    f = weights * (np.asarray(t.values) - low) / span
                    scores[k] = f.max() + self.rho * f.sum()
        worst = np.nanmax(scores) if np.any(np.isfinite(scores)) else 1.0 + self.rho + 1.1
        return np.where(np.isfinite(scores), scores, worst)

    def _kept(self, scores: np.ndarray) -> list[int]:
        """Indices of the told points to fit on: all, or past `max_points` the best half and the most recent."""
        if len(scores) <= self.max_points:
            return list(range(len(scores)))
        best = set(np.argsort(scores, kind="stable")[: self.max_points // 2].tolist())
        recent = [k for k in range(len(scores) - 1, -1, -1) if k not in best][: self.max_points - len(best)]
        return sorted(best | set(recent))

    def _optimizer(self, seed: int):
        from skopt import Optimizer
        from skopt.space import Integer, Real
        from skopt.utils import cook_estimator

        genes = [self.space.genes[i] for i in self._free]
        dimensions = [
            Integer(int(g.low), int(g.high), name=g.name) if g.integer else Real(g.low, g.high, name=g.name)
            for g in genes
        ]
        estimator = cook_estimator(
            "GP", space=dimensions, random_state=seed, n_restarts_optimizer=self.n_restarts_optimizer
        )
        return Optimizer(
            dimensions,
            base_estimator=estimator,
            n_initial_points=0,
            acq_func=self.acq_func,
            acq_optimizer=self.acq_optimizer,
            acq_optimizer_kwargs={"n_points": self.n_points},
            random_state=seed,
        )

    def _genome(self, point: Sequence[float]) -> list[float | int]:
        genome: list[float | int] = [_fixed_value(g) for g in self.space.genes]
        for i, value in zip(self._free, point, strict=True):
            genome[i] = _param(self.space.genes[i], value)
        return genome


@contextlib.contextmanager
def _quiet_skopt():
    """skopt warns when its acquisition optimum was evaluated before (it then draws a random point) and the
    GP fit warns on kernel bounds: expected in a search, and not the user's to act on."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The objective has been evaluated at")
        warnings.filterwarnings("ignore", module="sklearn")
        yield
