"""The ask/tell interface every searcher implements, and the registry of searchers by name.

A searcher proposes `Candidate`s with `ask(n)` and learns from `tell(candidate, evaluation)`; told
results may arrive in any order and from candidates asked long before (a driver keeps several in
flight). `state_dict()` returns JSON-serialisable state and `load_state_dict()` restores it exactly:
a searcher restored from its state asks the same candidates as the one that saved it. The same seed
and the same told results give the same candidates.

Subclasses implement `_propose(n)` (genomes, repaired or not) and `_learn(candidate, evaluation)`, and
extend `_state()` / `_load(state)` with what they keep beyond the base bookkeeping (told history, id
counter, numpy generator state).
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from decomp.errors import SearchError
from search.records import Candidate, Constraint, Evaluation, Objective
from search.space import Genome, Space

__all__ = ["SEARCHERS", "Searcher", "Told", "make_searcher", "register", "searcher_names"]

SEARCHERS: dict[str, type[Searcher]] = {}


def register(cls: type[Searcher]) -> type[Searcher]:
    """Class decorator: make a searcher available by its `name` to `make_searcher`."""
    SEARCHERS[cls.name] = cls
    return cls


def make_searcher(
    name: str,
    space: Space,
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint] = (),
    seed: int = 0,
    **settings: Any,
) -> Searcher:
    """The searcher called `name`; an unknown name is an error that lists the valid ones."""
    _load_builtin()
    if name not in SEARCHERS:
        raise SearchError(f"unknown searcher {name!r}; valid searchers: {', '.join(sorted(SEARCHERS))}")
    cls = SEARCHERS[name]
    accepted = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in _BASE_ARGS)
    ]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    unknown = sorted(set(settings) - set(accepted))
    if unknown and not takes_any:
        raise SearchError(
            f"unknown setting(s) {', '.join(unknown)} for searcher {name!r}; valid: {', '.join(accepted) or 'none'}"
        )
    return cls(space, objectives, constraints, seed=seed, **settings)


_BASE_ARGS = ("self", "space", "objectives", "constraints", "seed")


def searcher_names() -> list[str]:
    """Every registered searcher's name, built-in ones included."""
    _load_builtin()
    return sorted(SEARCHERS)


def _load_builtin() -> None:
    import search.searchers  # noqa: F401  (registers the built-in searchers)


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
        violation = self.violation if math.isfinite(self.violation) else str(self.violation)  # strict JSON: no inf
        return [self.id, list(self.genome), None if self.values is None else list(self.values), violation]

    @classmethod
    def from_json(cls, data: list) -> Told:
        return cls(data[0], tuple(data[1]), None if data[2] is None else tuple(data[2]), float(data[3]))


class Searcher(ABC):
    """Base class: id counter, seeded generator, told history, objective signs and violations."""

    name: ClassVar[str] = ""

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        seed: int = 0,
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
        self._signs = np.array([o.sign for o in self.objectives])

    # -- the interface -------------------------------------------------------------------------------

    def ask(self, n: int = 1) -> list[Candidate]:
        """`n` new candidates, each with a fresh id, a repaired genome and its decoded plans."""
        if n < 1:
            raise SearchError(f"ask needs n >= 1, got {n}")
        return [self.candidate(genome) for genome in self._propose(n)]

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
        if len(evaluation.values) != len(self.objectives):
            raise SearchError(
                f"evaluation of candidate {candidate.id} has {len(evaluation.values)} values for "
                f"{len(self.objectives)} objectives ({', '.join(o.name for o in self.objectives)})"
            )
        if len(evaluation.constraints) != len(self.constraints):
            raise SearchError(
                f"evaluation of candidate {candidate.id} has {len(evaluation.constraints)} constraint values for "
                f"{len(self.constraints)} constraints"
            )
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
