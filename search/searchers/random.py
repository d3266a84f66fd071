"""Random search: uniform genomes. The baseline every other searcher must beat."""

from __future__ import annotations

from search.base import Searcher
from search.registry import register

__all__ = ["RandomSearcher"]


@register
class RandomSearcher(Searcher):
    name = "random"

    def _propose(self, n: int):
        return [self.space.sample(self.rng) for _ in range(n)]
