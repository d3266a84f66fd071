"""Optuna's samplers over ask/tell ("optuna").

`OptunaSearcher` drives one of Optuna's samplers (`OptunaSettings`: `sampler` is "tpe" (default), "gp" or
"nsga2"; any other setting goes to the sampler's constructor, e.g. `n_startup_trials`) through `study.ask`
/ `add_trial` on a private in-memory study whose directions are all "minimize" over the searcher's
minimisation values.
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
refits its GPs at each ask (about a second at tens of trials), on one thread (`one_thread`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from decomp.errors import SearchError
from search.base import Searcher, Told
from search.records import Candidate, Constraint, Evaluation
from search.registry import register
from search.searchers._shared import derived_seed, one_thread
from search.settings import Settings, unknown_settings
from search.space import Genome
from search.study import gene_distribution

__all__ = ["OPTUNA_SAMPLERS", "OptunaSearcher", "OptunaSettings"]

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


def _constraint_excess(constraint: Constraint, value: float) -> float:
    """Signed distance past the bound: <= 0 when satisfied (Optuna's convention), > 0 by how much it is not.
    Unlike the clipped violation it keeps a slope on the feasible side, which the GP sampler models."""
    excess = value - constraint.bound if constraint.sense == "<=" else constraint.bound - value
    return float(excess)


@dataclass(frozen=True)
class OptunaSettings(Settings):
    """The optuna searcher's settings. In a job file or `make_searcher` the sampler's own arguments are given
    flat, next to `sampler` (`sampler: gp, n_startup_trials: 5`); `of` gathers them into `options`."""

    sampler: str = "tpe"
    """Which Optuna sampler: "tpe" (default), "gp" or "nsga2"."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the sampler's constructor (e.g. `n_startup_trials`), on top of our defaults
    (multivariate TPE). Not `seed` or `constraints_func`: the searcher sets those itself."""

    @classmethod
    def of(cls, searcher: str, values: Mapping[str, Any]) -> OptunaSettings:
        options = dict(values)
        return cls(options.pop("sampler", "tpe"), options)

    def __post_init__(self) -> None:
        if self.sampler not in OPTUNA_SAMPLERS:
            raise SearchError(
                f"unknown optuna sampler {self.sampler!r}; valid samplers: {', '.join(OPTUNA_SAMPLERS)} "
                "(set it with sampler=...)"
            )
        for key, why in _MANAGED.items():
            if key in self.options:
                raise SearchError(f"optuna searcher: do not set {key!r}: {why}")
        valid = _sampler_arguments(self.sampler)
        unknown = sorted(set(self.options) - set(valid))
        if unknown:
            raise unknown_settings(
                "optuna", unknown, f"sampler, and the {self.sampler!r} sampler's arguments: {', '.join(valid)}"
            )
        self._set(options=dict(self.options))
        try:
            self.make_sampler(0)
        except (TypeError, ValueError) as error:
            raise SearchError(
                f"optuna sampler {self.sampler!r} rejected its settings {self.options}: {error}"
            ) from error

    @property
    def sampler_kwargs(self) -> dict[str, Any]:
        """What the sampler's constructor gets besides `seed`: our defaults, overridden by `options`."""
        return {**_SAMPLER_DEFAULTS[self.sampler], **self.options}

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return OPTUNA_SAMPLERS[self.sampler](seed=seed, **self.sampler_kwargs)


@register
class OptunaSearcher(Searcher):
    """One of Optuna's samplers (TPE, GP, NSGA-II) behind the ask/tell interface; see the module docstring."""

    name = "optuna"
    settings_class = OptunaSettings
    settings: OptunaSettings

    def _build(self) -> None:
        self.sampler_name = self.settings.sampler
        self._distributions = {g.name: gene_distribution(g) for g in self.space.free_genes}
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
        return self.settings.make_sampler(derived_seed(self.seed, key))

    def _relative_space(self) -> dict[str, BaseDistribution] | None:
        """What the sampler's own `infer_relative_search_space` would answer, without walking every trial:
        every told trial has exactly the free genes' distributions, so Optuna's intersection search space is
        those genes (sorted by name, as Optuna sorts them) once a trial is complete, and empty before. None
        where the sampler must be asked (grouped TPE keeps state from it)."""
        settings = self.settings.sampler_kwargs
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
        params = dict(zip((g.name for g in self.space.free_genes), self.space.free_values(told.genome), strict=True))
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
        threads = one_thread(torch_too=True) if self.sampler_name == "gp" else contextlib.nullcontext()
        try:
            with threads:
                for i in range(n):
                    candidate_id = self._next_id + i
                    self._study.sampler = _KnownSpace(self._make_sampler(candidate_id), self._relative_space())
                    trial = self._study.ask(self._distributions)
                    for key, value in _placeholder_attrs(candidate_id).items():
                        trial.set_user_attr(key, value)
                    live.append((candidate_id, trial))
                    genomes.append(self.space.fill([trial.params[g.name] for g in self.space.free_genes]))
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


def _sampler_arguments(sampler: str) -> list[str]:
    """The keyword arguments of the sampler's constructor a user may set (not the managed ones)."""
    parameters = inspect.signature(OPTUNA_SAMPLERS[sampler].__init__).parameters
    return sorted(
        p
        for p, spec in parameters.items()
        if p != "self" and p not in _MANAGED and spec.kind in (spec.KEYWORD_ONLY, spec.POSITIONAL_OR_KEYWORD)
    )
