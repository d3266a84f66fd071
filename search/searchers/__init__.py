"""The built-in searchers, one module each; modules whose names start with an underscore hold helpers.

Each searcher module registers its searcher with `search.registry.register` when imported, and importing
this package imports them all: a new searcher is one new file here and its import below.
"""

from search.searchers.greedy import GreedySearcher, GreedySettings
from search.searchers.nsga2 import NSGA2Searcher, NSGA2Settings
from search.searchers.optuna import OPTUNA_SAMPLERS, OptunaSearcher, OptunaSettings
from search.searchers.random import RandomSearcher
from search.searchers.rl import REWARDS, RLSearcher, RLSettings
from search.searchers.skopt import SkoptSearcher, SkoptSettings

__all__ = [
    "OPTUNA_SAMPLERS",
    "REWARDS",
    "GreedySearcher",
    "GreedySettings",
    "NSGA2Searcher",
    "NSGA2Settings",
    "OptunaSearcher",
    "OptunaSettings",
    "RLSearcher",
    "RLSettings",
    "RandomSearcher",
    "SkoptSearcher",
    "SkoptSettings",
]
