"""Search spaces: the genes a searcher varies, and how a genome becomes plans.

`Space` is the interface every searcher works against: a tuple of `Gene`s (of which the `free` ones are
searched: `fill` and `free_values` map between their values and whole genomes), `sample` (uniform), `repair`
(bring any vector into the space: clip, round integer genes, and whatever a subclass must fix, such as
unordered pipeline cuts) and `decode` (genome -> pruning and partition plans). `BoxSpace` is the plain
box of floats used by the test problems (ZDT, DTLZ); the joint pruning x partition space builds on the
same interface.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decomp.errors import SearchError
from decomp.partition.plan import PartitionPlan
from decomp.pruning.plan import PruningPlan
from search.records import Gene

__all__ = ["BoxSpace", "Genome", "Space"]

Genome = tuple[float | int, ...]


class Space:
    """A set of genomes. Subclasses override `repair` and `decode`; `genes` fixes the coordinates."""

    def __init__(self, genes: Sequence[Gene]):
        self.genes = tuple(genes)
        names = [g.name for g in self.genes]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise SearchError(f"gene names must be unique; repeated: {', '.join(duplicated)}")
        if not self.genes or all(g.fixed for g in self.genes):
            raise SearchError(
                "the search space has nothing to search: every gene is fixed (give some groups a ratio range, "
                "or allow more than one part)"
            )
        self.free: tuple[int, ...] = tuple(i for i, g in enumerate(self.genes) if not g.fixed)
        """Indices of the genes a searcher varies (the fixed ones have one value only)."""

    def __len__(self) -> int:
        return len(self.genes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.genes)

    @property
    def lows(self) -> np.ndarray:
        return np.array([g.low for g in self.genes], dtype=np.float64)

    @property
    def highs(self) -> np.ndarray:
        return np.array([g.high for g in self.genes], dtype=np.float64)

    @property
    def free_genes(self) -> tuple[Gene, ...]:
        return tuple(self.genes[i] for i in self.free)

    def fill(self, free_values: Sequence[float]) -> list[float | int]:
        """The whole genome from values of the free genes (in `free` order), fixed genes at their one value.
        Not repaired: `Searcher.candidate` repairs what a searcher proposes."""
        if len(free_values) != len(self.free):
            raise SearchError(f"got {len(free_values)} values for the space's {len(self.free)} free genes")
        genome: list[float | int] = [int(g.low) if g.integer else float(g.low) for g in self.genes]
        for i, value in zip(self.free, free_values, strict=True):
            genome[i] = value
        return genome

    def free_values(self, genome: Sequence[float]) -> list[float | int]:
        """The free genes' values of `genome` (inverse of `fill`), ints for integer genes, floats otherwise."""
        return [int(genome[i]) if self.genes[i].integer else float(genome[i]) for i in self.free]

    def sample(self, rng: np.random.Generator) -> Genome:
        """A uniform draw (integer genes uniform over their values), repaired."""
        raw = [
            rng.integers(int(g.low), int(g.high) + 1) if g.integer else rng.uniform(g.low, g.high) for g in self.genes
        ]
        return self.repair(raw)

    def clip(self, genome: Sequence[float]) -> Genome:
        """Each value inside its gene's bounds, integer genes rounded."""
        if len(genome) != len(self.genes):
            raise SearchError(f"genome has {len(genome)} values but the space has {len(self.genes)} genes")
        return tuple(g.clip(float(v)) for g, v in zip(self.genes, genome, strict=True))

    def repair(self, genome: Sequence[float]) -> Genome:
        """The nearest valid genome. The base space only clips; subclasses add their own rules."""
        return self.clip(genome)

    def decode(self, genome: Genome) -> tuple[PruningPlan | None, PartitionPlan | None]:
        """The plans a (repaired) genome stands for; a plain box has none."""
        return None, None

    def baselines(self) -> list[Genome]:
        """Genomes known to be worth evaluating whatever the searcher (e.g. the unpruned model), asked before
        any searcher's own proposals; a plain box has none."""
        return []

    def start(self, rng: np.random.Generator) -> Genome:
        """Where a local search (the greedy searcher) begins a trajectory; the base space draws a uniform
        genome, spaces with a natural start (no pruning, an even split) override it."""
        return self.sample(rng)

    def moves(self, genome: Genome, step: float = 0.1) -> list[Genome]:
        """Neighbours of `genome` for a local search: every non-fixed gene moved by `step` of its span up and
        down (integer genes by at least 1), repaired, without duplicates or the genome itself. Spaces with
        structure override this (e.g. lower one group's keep level, shift one pipeline cut)."""
        out: dict[Genome, None] = {}
        for i, g in enumerate(self.genes):
            if g.fixed:
                continue
            delta = max(1.0, round(step * (g.high - g.low))) if g.integer else step * (g.high - g.low)
            for sign in (-1.0, 1.0):
                moved = list(genome)
                moved[i] = genome[i] + sign * delta
                out.setdefault(self.repair(moved), None)
        out.pop(tuple(genome), None)
        return list(out)

    def unit(self, genome: Sequence[float]) -> np.ndarray:
        """The genome scaled to [0, 1] per gene (fixed genes map to 0), for samplers that want a unit cube."""
        span = self.highs - self.lows
        return np.where(span > 0, (np.asarray(genome, dtype=np.float64) - self.lows) / np.where(span > 0, span, 1), 0.0)

    def from_unit(self, point: Sequence[float]) -> Genome:
        """Inverse of `unit`, repaired."""
        return self.repair(self.lows + np.clip(np.asarray(point, dtype=np.float64), 0, 1) * (self.highs - self.lows))


class BoxSpace(Space):
    """`n` float genes in [low, high] each (the test problems' decision space)."""

    def __init__(self, n: int, low: float = 0.0, high: float = 1.0, prefix: str = "x"):
        super().__init__([Gene(f"{prefix}{i}", low, high) for i in range(n)])
