"""search: the joint pruning x partition search space, objectives, Pareto utilities and searchers.

Pure policy over plain records: imports `decomp`'s plan and graph types, never `ray`, never does I/O.
The names below are the core ones; the joint space (`search.joint`), objectives (`search.objectives`),
test problems (`search.problems`), the Optuna result store (`search.study`) and the searchers themselves
(`search.searchers`) are imported from their modules.
"""

from search.base import Searcher, Told
from search.front import FrontTracker
from search.pareto import Normalizer, hypervolume, minimized, non_dominated
from search.records import Candidate, Constraint, Evaluation, Gene, Objective, json_float
from search.registry import SEARCHERS, check_searcher, make_searcher, register, searcher_names
from search.settings import Settings
from search.space import BoxSpace, Genome, Space

__all__ = [
    "SEARCHERS",
    "BoxSpace",
    "Candidate",
    "Constraint",
    "Evaluation",
    "FrontTracker",
    "Gene",
    "Genome",
    "Normalizer",
    "Objective",
    "Searcher",
    "Settings",
    "Space",
    "Told",
    "check_searcher",
    "hypervolume",
    "json_float",
    "make_searcher",
    "minimized",
    "non_dominated",
    "register",
    "searcher_names",
]
