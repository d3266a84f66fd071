"""search: the joint pruning x partition search space, objectives, Pareto utilities and searchers.

Pure policy over plain records: imports `decomp`'s plan and graph types, never `ray`, never does I/O.
"""

__all__: list[str] = []
