"""What a run keeps of its results: one study trial per candidate, the feasible front, the fidelity ladder,
the genomes already evaluated, and the weights of the candidates that earned keeping.

- A candidate climbs the fidelity levels while `search.fidelity.Ladder` says so (the space's baselines, e.g.
  the unpruned model, climb every level: they are the references the front is judged against, so they are
  measured as the best candidates are, the same fine-tune included), and is recorded once it stops: its
  trial holds the result of the level it reached (`metric:level`) and the lower levels' results (Optuna
  intermediate values of the first measured objective, and the full results in a user attribute), so a
  resumed run rebuilds the ladder from the study.
- A candidate is evaluated once: one asked again with the same plans (`identity`: its pruning and partition
  plans; its genome where the space has none, as genes a plan ignores may differ) is recorded at once with
  the first one's result (`metric:duplicate_of`), no evaluator time spent.
- The weights a measured result came with are kept, in `weights/<id>.safetensors` of the run folder, when
  the candidate reached the top level or joined the feasible front: what `decomp export` loads, so the
  export computes what the front shows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import optuna

from cluster.runs import NORMALIZER_ATTR, WEIGHTS
from decomp.errors import SearchError
from decomp.files import write_atomically
from search.fidelity import Ladder
from search.front import NORMALIZER_POINTS, FrontTracker
from search.pareto import Normalizer
from search.records import Candidate, Constraint, Evaluation, Objective
from search.space import Space
from search.study import lower_levels, record_trial, trials_to_records

__all__ = ["RunResults", "identity", "weights_path"]


def identity(candidate: Candidate) -> str | tuple:
    """What makes two candidates the same model: their plans (a pruning and a partition plan decide the model
    and where it runs; genes a plan ignores do not), or the genome where the space has no plans."""
    if candidate.pruning is None and candidate.partition is None:
        return tuple(candidate.genome)
    plans = [None if p is None else p.to_json() for p in (candidate.pruning, candidate.partition)]
    return json.dumps(plans, sort_keys=True)


def weights_path(folder: Path, candidate_id: int) -> Path:
    """Where a run keeps a candidate's measured weights."""
    return Path(folder) / WEIGHTS / f"{candidate_id}.safetensors"


class RunResults:
    """The results of one run as the driver keeps them (see the module docstring)."""

    def __init__(
        self,
        folder: Path,
        study: optuna.Study,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint],
        space: Space,
        levels: int,
        reduction: int,
        normalize_after: int,
    ) -> None:
        self.folder, self.study, self.space = folder, study, space
        self.objectives, self.constraints = tuple(objectives), tuple(constraints)
        self.top = levels - 1
        self.ladder = Ladder(objectives, constraints, levels, reduction)
        self.tracker = FrontTracker(objectives, constraints)
        self.normalize_after = min(NORMALIZER_POINTS, normalize_after)
        self.baselines = {tuple(space.repair(g)) for g in space.baselines()}
        self.genomes: dict[str | tuple, int] = {}  # an `identity` recorded -> the candidate first recorded with it
        self.final: dict[int, tuple[Evaluation, list[Evaluation]]] = {}  # recorded id -> (its result, lower ones)
        self.records = trials_to_records(study)
        lower = lower_levels(study)
        for candidate, evaluation in self.records:
            self._remember(candidate, evaluation, lower.get(candidate.id, []))
            self.tracker.add(evaluation)
        stored = study.user_attrs.get(NORMALIZER_ATTR)
        if stored is not None:
            self.tracker.normalizer = Normalizer.from_json(stored)

    @property
    def count(self) -> int:
        """Trials recorded."""
        return self.tracker.complete + self.tracker.failed

    def known(self, candidate: Candidate) -> int | None:
        """The recorded candidate with this one's `identity`, if any."""
        return self.genomes.get(identity(candidate))

    def climbs(self, level: int, evaluation: Evaluation, candidate: Candidate | None = None) -> bool:
        """Add a result at `level` to the ladder; True when it earns the candidate the next level (a baseline
        `candidate` climbs every level)."""
        if self.top == 0:
            return False
        baseline = candidate is not None and self._baseline(candidate)
        self.ladder.add(level, evaluation, free=baseline)
        if level < self.top and baseline:
            return evaluation.ok
        return self.ladder.climbs(level, evaluation.candidate_id)

    def resumed(self, candidate: Candidate, done: Sequence[Evaluation]) -> None:
        """Add the results a candidate in flight had at the levels below its own (it climbed from each)."""
        if self.top == 0:
            return
        for level, result in enumerate(done):
            self.ladder.add(level, result, free=self._baseline(candidate), climbed=True)

    def record(
        self,
        candidate: Candidate,
        evaluation: Evaluation,
        lower: Sequence[Evaluation] = (),
        weights: bytes | None = None,
    ) -> Evaluation:
        """Record the candidate's final result (after its `lower` levels) in the study, keep its weights where
        it earned that, and return what was recorded (a result that does not fit the job is recorded as a
        failure that says why)."""
        level = len(lower)
        try:
            evaluation.check_shape(self.objectives, self.constraints)
        except SearchError as err:  # the task gave values that do not fit the job: a failed trial, say why
            evaluation = Evaluation.failed(candidate.id, f"the evaluation does not fit the job: {err}")
        joined = self.tracker.add(evaluation)
        if weights is not None and evaluation.ok and (joined or level == self.top):
            write_atomically(weights_path(self.folder, candidate.id), weights)  # before the trial that names it
        record_trial(self.study, candidate, evaluation, self.objectives, self.constraints, self.space, lower=lower)
        self._remember(candidate, evaluation, list(lower))
        normalizer = self.tracker.fix_normalizer(self.normalize_after)
        if normalizer is not None:
            self.study.set_user_attr(NORMALIZER_ATTR, normalizer.to_json())
        return evaluation

    def duplicate(self, candidate: Candidate, original: int) -> Evaluation:
        """Record `candidate` with the result of the recorded candidate `original` (the same plans)."""
        evaluation, lower = self.final[original]
        copy = Evaluation(
            candidate.id,
            evaluation.values,
            evaluation.constraints,
            {**evaluation.metrics, "duplicate_of": float(original)},
            state=evaluation.state,
            message=evaluation.message,
        )
        self.tracker.add(copy)
        record_trial(self.study, candidate, copy, self.objectives, self.constraints, self.space, lower=lower)
        self.final[candidate.id] = (copy, lower)
        return copy

    def finish(self) -> None:
        """Fix the normaliser from whatever complete results there are (a short run)."""
        normalizer = self.tracker.fix_normalizer(1)
        if normalizer is not None:
            self.study.set_user_attr(NORMALIZER_ATTR, normalizer.to_json())

    def _remember(self, candidate: Candidate, evaluation: Evaluation, lower: list[Evaluation]) -> None:
        self.genomes.setdefault(identity(candidate), candidate.id)
        self.final[candidate.id] = (evaluation, lower)
        if "duplicate_of" in evaluation.metrics or self.top == 0:
            return
        for level, result in enumerate([*lower, evaluation]):
            if result.ok:
                self.ladder.add(level, result, free=self._baseline(candidate))

    def _baseline(self, candidate: Candidate) -> bool:
        return tuple(self.space.repair(candidate.genome)) in self.baselines
