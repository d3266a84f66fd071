"""The ask/tell interface every searcher implements.

A searcher proposes `Candidate`s with `ask(n)` and learns from `tell(candidate, evaluation)`; told
results may arrive in any order and from candidates asked long before (a driver keeps several in
flight). `state_dict()` returns JSON-serialisable state and `load_state_dict()` restores it exactly:
a searcher restored from its state asks the same candidates as the one that saved it. The same seed
and the same told results give the same candidates.

Subclasses declare their settings as a `search.settings.Settings` dataclass (`settings_class`), build
what those ask for in `_build()` (called at the end of `__init__`), implement `_propose(n)` (genomes,
repaired or not) and `_learn(candidate, evaluation, told)`, and extend `_state()` / `_load(state)` with
what they keep beyond the base bookkeeping (told history, id counter, numpy generator state). Searchers
are found by name through `search.registry`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from decomp.errors import SearchError
from search.records import Candidate, Constraint, Evaluation, Objective, json_float
from search.settings import Settings
from search.space import Genome, Space

__all__ = ["Searcher", "Told"]


class Told:
    """One told result as the searchers see it: genome, minimisation values (None when failed) and the
    total constraint violation (0 when feasible)."""

    __slots__ = ("id", "genome", "values", "violation")

    def __init__(self, id: int, genome: Genome, values: tuple[float, ...] | None, violation: float):
        self.id, self.genome, self.values, self.violation = id, genome, values, violation

    @property
    def feasible(self) -> bool:
        return self.values is not None and self.violation == 0.0

    def to_json(self) -> list:
        values = None if self.values is None else list(self.values)
        return [self.id, list(self.genome), values, json_float(self.violation)]

    @classmethod
    def from_json(cls, data: list) -> Told:
        return cls(data[0], tuple(data[1]), None if data[2] is None else tuple(data[2]), float(data[3]))


class Searcher(ABC):
    """Base class: id counter, seeded generator, told history, objective signs and violations."""

    name: ClassVar[str] = ""
    settings_class: ClassVar[type[Settings]] = Settings

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        seed: int = 0,
        settings: Settings | None = None,
    ):
        if not objectives:
            raise SearchError("a search needs at least one objective")
        names = [o.name for o in objectives]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise SearchError(f"objective named more than once: {', '.join(duplicated)}")
        self.space = space
        self.objectives = tuple(objectives)
        self.constraints = tuple(constraints)
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.history: list[Told] = []
        self._next_id = 0
        self._baselines_asked = 0  # of the space's baselines, asked before any proposal
        self._signs = np.array([o.sign for o in self.objectives])
        if settings is None:
            settings = self.settings_class()
        if type(settings) is not self.settings_class:
            raise SearchError(
                f"searcher {self.name!r} takes {self.settings_class.__name__}, got {type(settings).__name__}; "
                "build it with search.registry.make_searcher(name, ..., **settings)"
            )
        self.settings = settings
        self._build()

    # -- the interface -------------------------------------------------------------------------------

    def ask(self, n: int = 1) -> list[Candidate]:
        """`n` new candidates, each with a fresh id, a repaired genome and its decoded plans: the space's
        baselines first (once each), then the searcher's own proposals."""
        out = self.baseline_candidates(n)
        if len(out) < n:
            out += [self.candidate(genome) for genome in self._propose(n - len(out))]
        return out

    def baseline_candidates(self, n: int) -> list[Candidate]:
        """Up to `n` of the space's baselines not asked yet, as candidates (what every `ask` serves first)."""
        if n < 1:
            raise SearchError(f"ask needs n >= 1, got {n}")
        baselines = self.space.baselines()[self._baselines_asked : self._baselines_asked + n]
        self._baselines_asked += len(baselines)
        return [self.candidate(genome) for genome in baselines]

    def tell(self, candidate: Candidate, evaluation: Evaluation) -> None:
        """Learn the result of a candidate this searcher asked (failed results are kept as failures)."""
        if evaluation.candidate_id != candidate.id:
            raise SearchError(f"evaluation of candidate {evaluation.candidate_id} told for candidate {candidate.id}")
        told = self.told(candidate, evaluation)
        self.history.append(told)
        self._learn(candidate, evaluation, told)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state; `load_state_dict` on a searcher built with the same space, objectives
        and settings restores it."""
        return {
            "searcher": self.name,
            "seed": self.seed,
            "next_id": self._next_id,
            "baselines_asked": self._baselines_asked,
            "rng": _rng_state(self.rng),
            "history": [t.to_json() for t in self.history],
            **self._state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("searcher") != self.name:
            raise SearchError(
                f"this state belongs to searcher {state.get('searcher')!r}, not {self.name!r}; "
                "resume with the searcher that saved it"
            )
        self.seed = int(state["seed"])
        self._next_id = int(state["next_id"])
        # a state saved before searchers asked baselines: its run is under way, it asks none now
        self._baselines_asked = int(state.get("baselines_asked", len(self.space.baselines())))
        self.rng.bit_generator.state = _rng_unstate(state["rng"])
        self.history = [Told.from_json(t) for t in state["history"]]
        self._load(state)

    # -- helpers for subclasses ----------------------------------------------------------------------

    def candidate(self, genome: Sequence[float]) -> Candidate:
        """A new candidate for `genome` (repaired and decoded), with the next id."""
        genome = self.space.repair(genome)
        pruning, partition = self.space.decode(genome)
        candidate = Candidate(self._next_id, self.name, genome, pruning, partition)
        self._next_id += 1
        return candidate

    def told(self, candidate: Candidate, evaluation: Evaluation) -> Told:
        """The evaluation in minimisation form, with its total constraint violation."""
        if not evaluation.ok:
            return Told(candidate.id, candidate.genome, None, math.inf)
        evaluation.check_shape(self.objectives, self.constraints)
        values = tuple(float(v) for v in np.asarray(evaluation.values) * self._signs)
        violation = sum(c.violation(v) for c, v in zip(self.constraints, evaluation.constraints, strict=True))
        return Told(candidate.id, candidate.genome, values, float(violation))

    def front(self) -> list[Told]:
        """The feasible, non-dominated results told so far."""
        from search.pareto import non_dominated

        feasible = [t for t in self.history if t.feasible]
        if not feasible:
            return []
        mask = non_dominated(np.array([t.values for t in feasible]))
        return [t for t, keep in zip(feasible, mask, strict=True) if keep]

    # -- for subclasses ------------------------------------------------------------------------------

    def _build(self) -> None:  # noqa: B027
        """Set up what `self.settings` asks for (called once, at the end of `__init__`)."""

    @abstractmethod
    def _propose(self, n: int) -> list[Sequence[float]]:
        """`n` genomes to evaluate next."""

    def _learn(self, candidate: Candidate, evaluation: Evaluation, told: Told) -> None:  # noqa: B027
        """React to a told result (the base already appended it to `history`)."""

    def _state(self) -> dict[str, Any]:
        return {}

    def _load(self, state: dict[str, Any]) -> None:  # noqa: B027
        pass


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state  # plain dict of ints and strings: JSON-safe


def _rng_unstate(state: dict[str, Any]) -> dict[str, Any]:
    return state
