"""NSGA-II (Deb, Pratap, Agarwal and Meyarivan 2002) on DEAP, as an asynchronous ask/tell searcher.

How it runs
-----------
- The first `population` candidates are uniform random genomes (`Space.sample`).
- Once `population` results have been told (of any candidates, in any order), environmental selection
  (`deap.tools.selNSGA2`: non-dominated sorting, then crowding distance) over the told results gives the
  first parent population. Until then every ask is answered with more random genomes, so a driver that
  asks far ahead of its tells is never blocked.
- Offspring are bred from the current parents in batches: binary tournaments on dominance then crowding
  distance (`tools.selTournamentDCD`), simulated binary crossover on each pair with probability
  `crossover_prob` (`tools.cxSimulatedBinaryBounded`, itself swapping each gene with probability 1/2),
  then polynomial mutation of every child (`tools.mutPolynomialBounded`, each gene with probability
  `mutation_prob`). Asks take children from the current batch and breed a new one when it runs out.
- Every told result counts towards the next generation, whenever it was asked (before a restore too).
  When `population` results have been told since the last generation, `selNSGA2` over parents +
  those offspring gives the next parents, and the unused children of the old parents are dropped.

The genome is searched in float: integer genes get bounds widened by half a step ([low - 0.5, high +
0.5]) so that after `Space.repair` clips and rounds, every integer value, the end ones included, owns an
interval of the same width. Fixed genes (low == high) are left out of the operators (polynomial
mutation divides by the gene's span) and filled back in with their value.

Constraints are handled natively with Deb's constrained domination: a feasible result dominates an
infeasible one, of two infeasible ones the smaller total violation dominates, and two feasible ones
compare by ordinary Pareto domination. Failed evaluations (no values, or values that are not finite)
never enter a parent population; they do count towards the generation, so a run of failures cannot stall
the search. While fewer than 4 usable parents exist (everything failed) asks fall back to random genomes.

Settings: `NSGA2Settings` (population, crossover and mutation probabilities, distribution indices).

Budgets: a run costs `population` evaluations for the random start plus `population` per generation.
NSGA-II needs many generations, so it suits cheap evaluations (a latency or MAC model) better than
training runs. Measured on the test problems with results told out of order (8 in flight), the searcher
reaches 95% of the true front's hypervolume (all told points, `search.pareto.hypervolume`):
- `population=40` (the unit tests): ZDT1 with 30 variables and DTLZ2 (3 objectives, 12 variables) within
  8,000 evaluations each (seeds 0-7: at least 96.8% and 95.7%);
- the default `population=100`: both within 10,000 evaluations (seeds 0-1: at least 96.2% and 95.8%).
A smaller population converges in fewer evaluations; a larger one keeps a wider, denser front.

Randomness: all of it comes from the base class's numpy generator `self.rng`, which `state_dict` saves.
DEAP's operators draw from Python's global `random` module, so each breeding batch runs inside
`_deap_random`: it saves the global state, seeds the global module from `self.rng`, runs the operators
and puts the caller's global state back (under a lock, so two searchers in different threads cannot
interleave). Nobody else's use of `random` is disturbed and the searcher's own stream is fully
determined by its seed and the results it was told; the one thing this cannot guard against is other
threads drawing from the global `random` while a batch is being bred (a few milliseconds).

DEAP's own `base.ConstrainedFitness` is not used: it counts a violation only for a fitness without
values, does not order infeasible results by violation, and is unhashable (it defines `__eq__` without
`__hash__`), which `sortNondominated` needs. `DebFitness` below is the small subclass of
`deap.base.Fitness` that does what Deb's rule asks.
"""

from __future__ import annotations

import functools
import math
import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from deap import base, tools

from decomp.errors import SearchError
from search.base import Searcher, Told
from search.records import Candidate, Evaluation, json_float
from search.registry import register
from search.settings import Settings, check_number

__all__ = ["DebFitness", "NSGA2Searcher", "NSGA2Settings", "fitness_class"]

_GLOBAL_RANDOM_LOCK = threading.Lock()


@dataclass(frozen=True)
class NSGA2Settings(Settings):
    """The nsga2 searcher's settings."""

    population: int = 100
    """Parents per generation and results per generation; at least 4 (tournaments take parents in fours)."""
    crossover_prob: float = 0.9
    """Probability that a mated pair goes through SBX (else they are only mutated)."""
    eta_crossover: float = 15.0
    """SBX distribution index: larger keeps children closer to their parents."""
    eta_mutation: float = 20.0
    """Polynomial mutation index: larger makes smaller steps."""
    mutation_prob: float | None = None
    """Per-gene mutation probability; None means 1 / (number of non-fixed genes)."""

    def __post_init__(self) -> None:
        self._set(
            population=check_number(
                "nsga2",
                "population",
                self.population,
                "an integer >= 4 (tournaments take parents in fours)",
                lambda v: v >= 4,
                integer=True,
            ),
            crossover_prob=check_number("nsga2", "crossover_prob", self.crossover_prob, "in [0, 1]", _probability),
            **{
                name: check_number("nsga2", name, getattr(self, name), "a finite number >= 0", lambda v: v >= 0)
                for name in ("eta_crossover", "eta_mutation")
            },
            mutation_prob=check_number(
                "nsga2",
                "mutation_prob",
                self.mutation_prob,
                "in (0, 1] (or None for 1/genes)",
                lambda v: 0 < v <= 1,
                optional=True,
            ),
        )


def _probability(v: float) -> bool:
    return 0 <= v <= 1


class DebFitness(base.Fitness):
    """A DEAP fitness with Deb's constrained domination. Subclasses fix `weights` (all -1: minimise)."""

    def __init__(self, values: Sequence[float] = (), violation: float = 0.0):
        super().__init__(values)
        self.violation = violation

    def dominates(self, other: DebFitness, obj: slice = slice(None)) -> bool:
        if self.violation == 0.0 and other.violation == 0.0:
            return super().dominates(other, obj)
        return self.violation < other.violation

    def __hash__(self) -> int:
        return hash((self.wvalues, self.violation))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DebFitness):
            return NotImplemented
        return self.wvalues == other.wvalues and self.violation == other.violation

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal


@functools.cache
def fitness_class(n_objectives: int) -> type[DebFitness]:
    """The fitness class for `n_objectives` minimised objectives (DEAP keeps weights on the class)."""
    return type(f"DebFitness{n_objectives}", (DebFitness,), {"weights": (-1.0,) * n_objectives})


class _Individual(list):
    """The non-fixed genes as floats, with a DEAP fitness and the told result it stands for (both None for
    children not yet evaluated)."""

    def __init__(self, genes: Sequence[float], fitness: DebFitness | None = None, told: Told | None = None):
        super().__init__(float(g) for g in genes)
        self.fitness = fitness
        self.told = told


@contextmanager
def _deap_random(seed: int) -> Iterator[None]:
    """Run DEAP operators on the global `random` module seeded with `seed`, then restore the caller's state."""
    with _GLOBAL_RANDOM_LOCK:
        outer = random.getstate()
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(outer)


@register
class NSGA2Searcher(Searcher):
    """NSGA-II with constrained domination, bred with DEAP's operators; see the module docstring."""

    name = "nsga2"
    settings_class = NSGA2Settings
    settings: NSGA2Settings

    def _build(self) -> None:
        settings, space = self.settings, self.space
        self.mutation_prob = 1.0 / len(space.free) if settings.mutation_prob is None else settings.mutation_prob
        widen = [0.5 if space.genes[i].integer else 0.0 for i in space.free]
        low = [space.genes[i].low - w for i, w in zip(space.free, widen, strict=True)]
        up = [space.genes[i].high + w for i, w in zip(space.free, widen, strict=True)]
        self._fitness = fitness_class(len(self.objectives))
        self.toolbox = base.Toolbox()
        self.toolbox.register("select", tools.selNSGA2)
        self.toolbox.register("tournament", tools.selTournamentDCD)
        self.toolbox.register("mate", tools.cxSimulatedBinaryBounded, eta=settings.eta_crossover, low=low, up=up)
        self.toolbox.register(
            "mutate", tools.mutPolynomialBounded, eta=settings.eta_mutation, low=low, up=up, indpb=self.mutation_prob
        )

        self._sampled = 0  # random genomes proposed for the initial population
        self._parents: list[_Individual] = []  # current parents, crowding distances set
        self._offspring: list[_Individual] = []  # usable results told since the last generation
        self._told_since = 0  # results told since the last generation, failures included
        self._generation = 0  # parent populations formed so far
        self._queue: list[list[float]] = []  # bred children (non-fixed genes) not yet asked

    @property
    def generation(self) -> int:
        """How many parent populations have been formed (0 while the random start is still running)."""
        return self._generation

    @property
    def parents(self) -> list[Told]:
        """The current parent population, best non-domination rank first (empty before the first one)."""
        return [p.told for p in self._parents]

    # -- ask -----------------------------------------------------------------------------------------

    def _propose(self, n: int) -> list[Sequence[float]]:
        genomes: list[Sequence[float]] = []
        while len(genomes) < n:
            if self._sampled < self.settings.population or len(self._parents) < 4:
                if self._sampled < self.settings.population:
                    self._sampled += 1
                genomes.append(self.space.sample(self.rng))
                continue
            if not self._queue:
                self._queue = self._breed()
            genomes.append(self.space.fill(self._queue.pop(0)))
        return genomes

    def _breed(self) -> list[list[float]]:
        """A batch of children of the current parents (as many as the largest multiple of 4 parents)."""
        k = len(self._parents) - len(self._parents) % 4
        with _deap_random(int(self.rng.integers(2**63))):
            mates = self.toolbox.tournament(self._parents, k)
            children = [_Individual(m) for m in mates]
            for a, b in zip(children[::2], children[1::2], strict=True):
                if random.random() < self.settings.crossover_prob:
                    self.toolbox.mate(a, b)
                self.toolbox.mutate(a)
                self.toolbox.mutate(b)
        return [list(c) for c in children]

    # -- tell ----------------------------------------------------------------------------------------

    def _learn(self, candidate: Candidate, evaluation: Evaluation, told: Told) -> None:
        self._told_since += 1
        if told.values is not None and all(math.isfinite(v) for v in told.values):
            self._offspring.append(self._individual(told))
        if self._told_since >= self.settings.population:
            pool = self._parents + self._offspring
            self._parents = self.toolbox.select(pool, min(self.settings.population, len(pool)))
            self._offspring, self._told_since, self._queue = [], 0, []
            self._generation += 1

    # -- state ---------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "settings": self._settings_json(),
            "genes": len(self.space.genes),
            "sampled": self._sampled,
            "told_since": self._told_since,
            "generation": self._generation,
            "parents": [[p.told.to_json(), json_float(p.fitness.crowding_dist)] for p in self._parents],
            "offspring": [o.told.to_json() for o in self._offspring],
            "queue": [list(c) for c in self._queue],
        }

    def _load(self, state: dict[str, Any]) -> None:
        settings = self._settings_json()
        if state.get("settings") != settings or state.get("genes") != len(self.space.genes):
            raise SearchError(
                f"this nsga2 state was saved with settings {state.get('settings')} and {state.get('genes')} genes, "
                f"but this searcher has {settings} and {len(self.space.genes)} genes; "
                "build the searcher with the same space and settings as the one that saved it"
            )
        self._sampled = int(state["sampled"])
        self._told_since = int(state["told_since"])
        self._generation = int(state["generation"])
        self._parents = [self._individual(Told.from_json(told), float(crowding)) for told, crowding in state["parents"]]
        self._offspring = [self._individual(Told.from_json(told)) for told in state["offspring"]]
        self._queue = [[float(v) for v in c] for c in state["queue"]]

    def _individual(self, told: Told, crowding: float | None = None) -> _Individual:
        """A DEAP individual for a usable told result (with its crowding distance when restoring parents)."""
        fitness = self._fitness(told.values, told.violation)
        if crowding is not None:
            fitness.crowding_dist = crowding
        return _Individual(self.space.free_values(told.genome), fitness, told)

    def _settings_json(self) -> dict[str, Any]:
        """The settings as the state keeps them, with `mutation_prob` resolved for this space."""
        return {**asdict(self.settings), "mutation_prob": self.mutation_prob}
