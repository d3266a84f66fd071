"""Greedy search, NetAdapt-style (Yang et al. 2018): walk from a large model down a resource objective,
at each step taking the proposal that loses least of the other objectives for the resource it saves.

A trajectory starts at `space.start()` (for the joint space: nothing pruned, an even split). Each step
evaluates the current genome's neighbours (`space.moves`: lower one group's keep level, shift one
pipeline cut, ...) and moves to the one with the least *loss per saving*: the summed increase of the
other objectives divided by the decrease of the resource objective, each normalised by the spread of
everything told so far. Moves that save nothing are not taken, except that a move which loses nothing
and saves nothing is never needed; a move that improves every objective (a partition move that lowers
the bottleneck without changing the model) has a loss of at most 0 and is taken first. Infeasible moves
(constraint violation > 0) are taken only when no feasible move saves anything, the least violating
first. When no move saves any resource the trajectory ends at a local optimum and a new one starts from
a random genome (`space.sample`), with a smaller step after each restart of a float space. A step whose
moves were all told before is walked at the next ask without asking anything (at most `STALLED_STEPS` in a
row, then the ask explores at random).

Every point of every trajectory is a told result, so the searcher's front is the front of all visited
points: NetAdapt's family of models from large to small, plus the local optima of the partition.

Settings: `GreedySettings` (the resource objective, the step size, a tie-break metric, moves per step).

Asynchronous use: the moves of one step are asked together; asking more than are waiting gives random
genomes (exploration), which are told like any other result and can seed a better start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from decomp.errors import SearchError
from search.base import Searcher, Told
from search.records import Candidate, Evaluation
from search.registry import register
from search.settings import Settings, check_number

__all__ = ["GreedySearcher", "GreedySettings"]

# steps walked at one ask without asking anything (their moves were all told before) before the ask explores
# at random instead: a small space the walks have exhausted would otherwise recurse through restarts forever
STALLED_STEPS = 1000


@dataclass(frozen=True)
class GreedySettings(Settings):
    """The greedy searcher's settings."""

    resource: str | None = None
    """The objective to lower, by name; None for the first objective."""
    step: float = 0.1
    """Move size, as a share of a gene's span, for spaces whose moves take one."""
    tiebreak: str | None = None
    """A metric the evaluations report, e.g. `stage_rms_s` from `decomp.latency.CostModel`: a move that
    changes no objective is taken when it lowers this metric. Min-max objectives such as a pipeline's
    bottleneck stage have plateaus: shifting a cut between two stages that are not the bottleneck changes
    nothing until they are even enough to let the bottleneck's own cut move; the root mean square of the
    stage times leads there."""
    moves_per_step: int | None = None
    """Evaluate a random subset of this many moves per step instead of all of them (None): more, cheaper
    steps, so a trajectory gets further on a small budget."""

    def __post_init__(self) -> None:
        for name in ("resource", "tiebreak"):
            if not isinstance(getattr(self, name), (str, type(None))):
                raise SearchError(f"greedy searcher: {name} must be a name or None, got {getattr(self, name)!r}")
        self._set(
            step=check_number("greedy", "step", self.step, "in (0, 1]", lambda v: 0 < v <= 1),
            moves_per_step=check_number(
                "greedy",
                "moves_per_step",
                self.moves_per_step,
                "a whole number >= 1 (or None for all)",
                lambda v: v >= 1,
                integer=True,
                optional=True,
            ),
        )


@register
class GreedySearcher(Searcher):
    name = "greedy"
    settings_class = GreedySettings
    settings: GreedySettings

    def _build(self) -> None:
        names = [o.name for o in self.objectives]
        resource = self.settings.resource
        if resource is not None and resource not in names:
            raise SearchError(f"greedy: resource {resource!r} is not an objective; choose one of {', '.join(names)}")
        self.resource = names.index(resource) if resource is not None else 0
        self._tb: dict[tuple, float] = {}  # genome -> the tie-break metric, where told
        self._current: tuple | None = None  # genome of the trajectory's current point
        self._current_told: list | None = None  # [values, violation] once told
        self._queue: list[tuple] = []  # genomes to ask, for the current step
        self._waiting: dict[int, tuple] = {}  # candidate id -> genome of this step still to be told
        self._step_results: list[list] = []  # [genome, values, violation] told in this step
        self._seen: dict[tuple, list] = {}  # genome -> [values, violation] of everything told
        self._restarts = 0
        self._rest: list[tuple] = []  # moves of this step not sampled (moves_per_step)
        self._stalled = False  # the current step's moves were all told already: choose before asking

    # -- ask ----------------------------------------------------------------------------------------

    def _propose(self, n: int):
        return [g for g, _ in self._take(n)]

    def ask(self, n: int = 1) -> list[Candidate]:
        candidates = self.baseline_candidates(n)  # the space's baselines first, as every searcher asks them
        if len(candidates) == n:
            return candidates
        for genome, of_step in self._take(n - len(candidates)):
            c = self.candidate(genome)
            if of_step:
                self._waiting[c.id] = c.genome
            candidates.append(c)
        return candidates

    def _take(self, n: int) -> list[tuple[tuple, bool]]:
        """`n` genomes: the current step's first, then random ones (exploration); flagged by origin."""
        if self._current is None:
            self._begin(self.space.start(self.rng) if self._restarts == 0 else self.space.sample(self.rng))
        for _ in range(STALLED_STEPS):  # steps whose moves were all told before: walk on without asking
            if not self._stalled:
                break
            self._stalled = False
            self._choose()
        out = []
        while len(out) < n and self._queue:
            out.append((self._queue.pop(0), True))
        while len(out) < n:  # the step is all out: explore
            out.append((self.space.sample(self.rng), False))
        return out

    def _begin(self, genome) -> None:
        self._current = tuple(self.space.repair(genome))
        self._current_told = self._seen.get(self._current)
        self._queue = [] if self._current_told is not None else [self._current]
        self._step_results = []
        if self._current_told is not None:
            self._queue_moves()

    def _queue_moves(self) -> None:
        moves = self.space.moves(self._current, self._step_size())
        self._rest = []
        most = self.settings.moves_per_step
        if most is not None and len(moves) > most:
            keep = set(self.rng.choice(len(moves), most, replace=False).tolist())
            self._rest = [m for i, m in enumerate(moves) if i not in keep]  # tried when none of these saves
            moves = [m for i, m in enumerate(moves) if i in keep]
        self._step_results = [[m, *self._seen[m]] for m in moves if m in self._seen]
        moves = [m for m in moves if m not in self._seen]
        self._queue = moves
        if not moves and not self._waiting:
            self._stalled = True  # every move already told: choose at the next ask (no recursion)

    def _step_size(self) -> float:
        return self.settings.step / (1 + self._restarts) ** 0.5

    # -- tell ---------------------------------------------------------------------------------------

    def _learn(self, candidate: Candidate, evaluation: Evaluation, told: Told) -> None:
        result = [told.values, told.violation]
        self._seen[candidate.genome] = result
        tiebreak = self.settings.tiebreak
        if tiebreak is not None and told.values is not None and tiebreak in evaluation.metrics:
            self._tb[candidate.genome] = float(evaluation.metrics[tiebreak])
        if self._waiting.pop(candidate.id, None) is None:
            return  # exploration, or a candidate asked before a restore
        if candidate.genome == self._current and self._current_told is None:
            self._current_told = result
            if told.values is None:  # the start failed: start elsewhere
                self._restart()
                return
            self._queue_moves()
            return
        self._step_results.append([candidate.genome, *result])
        if not self._queue and not self._waiting:
            self._choose()

    def _choose(self) -> None:
        """Move to the best told neighbour, or restart when none saves any resource."""
        values, violation = self._current_told
        here = np.asarray(values)
        options = [(g, v, x) for g, v, x in self._step_results if v is not None]
        scale = self._scale()
        here_tb = self._tb.get(self._current)
        best, best_key = None, None
        for genome, v, x in options:
            delta = (np.asarray(v) - here) / scale
            saving = -delta[self.resource]
            others = np.delete(delta, self.resource)
            loss = float(np.sum(others))
            sideways = abs(saving) <= 1e-12 and abs(loss) <= 1e-12
            if sideways:  # changes no objective: taken only when it lowers the tie-break metric
                if not (genome in self._tb and here_tb is not None and self._tb[genome] < here_tb * (1 - 1e-9)):
                    continue
                category, rank = 2, (self._tb[genome],)
            elif saving < -1e-12 or (saving <= 1e-12 and loss >= -1e-12):
                continue  # costs resource, or saves none and improves nothing else
            elif loss <= 1e-12:  # saves resource at no loss, or loses none and improves the rest
                category, rank = 0, (-(saving - loss),)
            else:
                category, rank = 1, (loss / saving, -saving)
            feasible = x == 0.0 or x <= violation
            key = (0 if feasible else 1, 0.0 if feasible else x, category, *rank)
            if best_key is None or key < best_key:
                best, best_key = (genome, v, x), key
        if best is None and self._rest:  # the sampled moves save nothing: try the others before giving up
            self._step_results += [[m, *self._seen[m]] for m in self._rest if m in self._seen]
            self._queue, self._rest = [m for m in self._rest if m not in self._seen], []
            if not self._queue:
                self._choose()
            return
        if best is None:
            self._restart()
            return
        self._current = best[0]
        self._current_told = [best[1], best[2]]
        self._queue_moves()

    def _restart(self) -> None:
        self._restarts += 1
        self._begin(self.space.sample(self.rng))

    def _scale(self) -> np.ndarray:
        told = np.array([v for v, _ in self._seen.values() if v is not None])
        spread = told.max(axis=0) - told.min(axis=0) if len(told) else np.ones(len(self.objectives))
        return np.where(spread > 0, spread, 1.0)

    # -- state --------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "current": None if self._current is None else list(self._current),
            "current_told": self._current_told and [_opt_list(self._current_told[0]), self._current_told[1]],
            "queue": [list(g) for g in self._queue],
            "waiting": {str(k): list(g) for k, g in self._waiting.items()},
            "step_results": [[list(g), _opt_list(v), x] for g, v, x in self._step_results],
            "restarts": self._restarts,
            "rest": [list(g) for g in self._rest],
            "tiebreak": [[list(g), v] for g, v in self._tb.items()],
            "stalled": self._stalled,
        }

    def _load(self, state: dict[str, Any]) -> None:
        self._seen = {t.genome: [t.values, t.violation] for t in self.history}
        self._current = None if state["current"] is None else tuple(state["current"])
        ct = state["current_told"]
        self._current_told = None if not ct else [None if ct[0] is None else tuple(ct[0]), ct[1]]
        self._queue = [tuple(g) for g in state["queue"]]
        self._waiting = {int(k): tuple(g) for k, g in state["waiting"].items()}
        self._step_results = [[tuple(g), None if v is None else tuple(v), x] for g, v, x in state["step_results"]]
        self._restarts = int(state["restarts"])
        self._rest = [tuple(g) for g in state["rest"]]
        self._tb = {tuple(g): float(v) for g, v in state["tiebreak"]}
        self._stalled = bool(state.get("stalled", False))


def _opt_list(values):
    return None if values is None else list(values)
