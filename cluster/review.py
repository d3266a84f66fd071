"""Reviewing a search run: its trials, Pareto front and hypervolume over time, as tables and JSON (one
candidate: `cluster.candidate_view`; its export: `cluster.export`; optuna-dashboard: `cluster.dashboard`).

Everything here reads the run folder (`cluster.runs`) and its study through `search.study.trials_to_records`;
nothing writes to the study. Objective values stay in their natural units and directions; the front is taken
over complete, feasible trials (every constraint satisfied) in minimisation form. Hypervolume uses the
study's fixed normaliser (user attribute `decomp:normalizer`) so it matches what the search reported; a study
without one gets a normaliser fixed from all its complete trials, and `Review.normalizer_source` says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from cluster.config import JobConfig
from cluster.runs import NORMALIZER_ATTR, open_study
from cluster.task import MEASURED
from cluster.units import PER_BATCH, format_value, per_sample, short_name
from decomp.errors import DecompError, SpecError
from search.front import FrontTracker
from search.pareto import Normalizer, minimized, non_dominated
from search.records import Candidate, Constraint, Evaluation, Objective, json_float
from search.study import constraint_key, trials_to_records

__all__ = ["ARROWS", "Review", "Row", "front_note", "front_rows", "review_json", "review_run", "row_json"]


@dataclass(frozen=True)
class Row:
    """One recorded trial: its Optuna number, the candidate and its evaluation, and whether it counts for
    the front (complete and every constraint satisfied)."""

    trial: int
    candidate: Candidate
    evaluation: Evaluation
    feasible: bool


@dataclass(frozen=True)
class Review:
    """A run as the review commands see it: every recorded trial in trial order, the non-dominated feasible
    ones, and the hypervolume after each trial (by trial number)."""

    folder: Path
    config: JobConfig
    study_name: str
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    rows: list[Row]
    front: list[Row]
    normalizer: Normalizer | None
    normalizer_source: str
    hypervolume: list[tuple[int, float]] = field(default_factory=list)
    same_plans: dict[int, list[int]] = field(default_factory=dict)  # front id -> ids left out, with its plans

    @property
    def batch_size(self) -> int:
        """Samples per micro-batch the run costed its graph at (`latency.batch_size`)."""
        return self.config.latency.batch_size

    def levels(self) -> tuple[str, ...]:
        """The fidelity levels the run measured at, cheapest first (none where it measured nothing)."""
        names = [o.name for o in self.objectives] + [c.name for c in self.constraints]
        return self.config.accuracy.levels() if any(n in MEASURED for n in names) else ()

    def counts(self) -> dict[str, int]:
        complete = sum(r.evaluation.ok for r in self.rows)
        return {
            "trials": len(self.rows),
            "complete": complete,
            "failed": len(self.rows) - complete,
            "infeasible": sum(r.evaluation.ok and not r.feasible for r in self.rows),
            "front": len(self.front),
        }

    def unpruned(self) -> Row | None:
        """The complete trial of the model with nothing pruned that was asked first (a space's first baseline:
        in the fewest parts), if any."""
        rows = [
            r
            for r in self.rows
            if r.evaluation.ok and r.candidate.pruning is not None and not r.candidate.pruning.prunes()
        ]
        return min(rows, key=lambda r: r.candidate.id, default=None)

    def find(self, candidate_id: int) -> Row:
        """The trial of `candidate_id`; an unknown id is an error that lists some valid ones."""
        for row in self.rows:
            if row.candidate.id == candidate_id:
                return row
        if not self.rows:
            raise SpecError(f"run {self.folder} has no recorded trials yet; wait for the search to record some")
        shown = [r.candidate.id for r in self.front] or [r.candidate.id for r in self.rows]
        raise SpecError(
            f"run {self.folder} has no candidate {candidate_id}; candidates on the front: "
            f"{', '.join(map(str, shown[:12]))}{' ...' if len(shown) > 12 else ''} (all: `decomp pareto {self.folder}`)"
        )


def review_run(folder: str | Path) -> Review:
    """Read the run in `folder`: trials, feasibility, front and hypervolume history."""
    folder = Path(folder)
    config, study = open_study(folder)
    objectives, constraints = config.objective_records(), config.constraint_records()
    names = [o.name for o in objectives]
    if study.metric_names is not None and list(study.metric_names) != names:
        raise SpecError(
            f"run {folder}: the study records objectives {study.metric_names} but {folder}/config.yaml names "
            f"{names}; restore the config the run was started with"
        )
    numbers = {
        int(t.user_attrs["candidate_id"]): t.number
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        if "candidate_id" in t.user_attrs
    }
    rows = []
    for candidate, evaluation in trials_to_records(study):
        if candidate.id in numbers:  # a trial recorded after the snapshot above waits for the next review
            rows.append(Row(numbers[candidate.id], candidate, evaluation, _feasible(evaluation, constraints, folder)))
    points = minimized([r.evaluation.values for r in rows if r.feasible], objectives)
    feasible = [r for r in rows if r.feasible]
    # a repeated genome's trial (`duplicate_of`) copies its original's result: the front lists the original once
    front = [
        r
        for r, keep in zip(feasible, non_dominated(points), strict=True)
        if keep and "duplicate_of" not in r.evaluation.metrics
    ]
    front.sort(key=lambda r: (tuple(minimized([r.evaluation.values], objectives)[0]), r.trial))
    front, same = _distinct(front)
    normalizer, source = _normalizer(study.user_attrs.get(NORMALIZER_ATTR), rows, objectives)
    return Review(
        folder,
        config,
        study.study_name,
        objectives,
        constraints,
        rows,
        front,
        normalizer,
        source,
        _history(rows, objectives, constraints, normalizer),
        same,
    )


def _distinct(front: list[Row]) -> tuple[list[Row], dict[int, list[int]]]:
    """The front with one row per pair of plans (the first; later ones with the same plans, e.g. genomes that
    differ only in genes their part count leaves unused, are the same model) and the ids left out, by the
    id kept."""
    first: dict[str, Row] = {}
    same: dict[int, list[int]] = {}
    for row in front:
        c = row.candidate
        key = json.dumps([None if p is None else p.to_json() for p in (c.pruning, c.partition)], sort_keys=True)
        if key in first:
            same.setdefault(first[key].candidate.id, []).append(c.id)
        else:
            first[key] = row
    return list(first.values()), same


def _feasible(evaluation: Evaluation, constraints: Sequence[Constraint], folder: Path) -> bool:
    if not evaluation.ok:
        return False
    if len(evaluation.constraints) != len(constraints):
        raise SpecError(
            f"run {folder}: candidate {evaluation.candidate_id} has {len(evaluation.constraints)} constraint values "
            f"but config.yaml names {len(constraints)} constraints; restore the config the run was started with"
        )
    return all(c.violation(v) == 0.0 for c, v in zip(constraints, evaluation.constraints, strict=True))


def _normalizer(stored: Any, rows: list[Row], objectives: Sequence[Objective]) -> tuple[Normalizer | None, str]:
    """The study's fixed normaliser, else one fixed from every complete trial (and a note saying which)."""
    if stored is not None:
        try:
            return Normalizer.from_json(json.loads(stored) if isinstance(stored, str) else stored), "the study's"
        except (ValueError, KeyError, TypeError, DecompError) as err:
            raise SpecError(f"the study's {NORMALIZER_ATTR} attribute is not a normaliser ({err})") from None
    complete = [r.evaluation.values for r in rows if r.evaluation.ok]
    if not complete:
        return None, "none (no complete trial yet)"
    normalizer = Normalizer.from_points(minimized(complete, objectives))
    return normalizer, f"fixed from all {len(complete)} complete trials (the study stores none)"


def _history(
    rows: list[Row], objectives: Sequence[Objective], constraints: Sequence[Constraint], normalizer: Normalizer | None
) -> list[tuple[int, float]]:
    """Hypervolume of the feasible front after each trial, in trial order (0 while there is no normaliser)."""
    tracker = FrontTracker(objectives, constraints, normalizer)
    out = []
    for row in sorted(rows, key=lambda r: r.trial):
        tracker.add(row.evaluation)
        out.append((row.trial, tracker.hypervolume or 0.0))
    return out


# -- presentation data ------------------------------------------------------------------------------
ARROWS = {"maximize": "↑", "minimize": "↓"}


def front_rows(review: Review) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the front table, narrow enough for 80 columns: the candidate id, its parts, the
    fidelity level it reached (where the run has several), each objective (compact units; per sample where it
    was costed per micro-batch) and the test figures of the measured ones. `front_note` says how to read it;
    `review_json` has every column (trial, searcher, constraint values, all metrics)."""
    levels = review.levels()
    tests = [
        f"test_{o.name}"
        for o in review.objectives
        if o.name in MEASURED and any(f"test_{o.name}" in r.evaluation.metrics for r in review.front)
    ]
    columns = ["id", "parts"] + (["level"] if len(levels) > 1 else [])
    columns += [f"{short_name(o.name)} {ARROWS[o.direction]}" for o in review.objectives]
    columns += [short_name(t) for t in tests]
    rows = []
    for row in review.front:
        e = row.evaluation
        cells = [str(row.candidate.id), str(_parts(row))]
        if len(levels) > 1:
            cells.append(levels[int(e.metrics["level"])] if "level" in e.metrics else "-")
        cells += [
            format_value(o.name, per_sample(o.name, v, review.batch_size), compact=True)
            for o, v in zip(review.objectives, e.values, strict=True)
        ]
        cells += [format_value(t, e.metrics[t], compact=True) if t in e.metrics else "-" for t in tests]
        rows.append(cells)
    return columns, rows


def front_note(review: Review) -> str:
    """How to read the front table: directions, per-sample quantities, the batch the rest is costed at, the
    constraints every row meets, the levels, and the candidates left out as repeats of a listed one."""
    names = [o.name for o in review.objectives]
    lines = ["the non-dominated feasible candidates; ↑ higher is better, ↓ lower"]
    per = [short_name(n) for n in names if n in PER_BATCH]
    if per:
        lines.append(f"per sample: {', '.join(per)}")
    if "latency_s" in names:
        lines.append(f"latency: a batch of {review.config.latency.micro_batches} micro-batches of {review.batch_size}")
    at_micro = [short_name(n) for n in names if n in ("bottleneck_s", "peak_memory")]
    if at_micro:
        lines.append(f"{', '.join(at_micro)}: a micro-batch of {review.batch_size} samples")
    if review.constraints:
        bounds = [
            f"{c.name} {_SENSES.get(c.sense, c.sense)} {format_value(c.name, c.bound, compact=True)}"
            + (f" per {review.batch_size}" if c.name in PER_BATCH else "")
            for c in review.constraints
        ]
        lines.append(f"every candidate meets {', '.join(bounds)}")
    if len(review.levels()) > 1:
        lines.append(f"level: the fidelity the candidate reached ({' < '.join(review.levels())})")
    if review.same_plans:
        repeats = ", ".join(f"{', '.join(map(str, ids))} (= {kept})" for kept, ids in review.same_plans.items())
        lines.append(f"same plans as a listed candidate, not listed: {repeats}")
    unpruned = review.unpruned()
    if unpruned is not None and all(r.candidate.pruning.prunes() for r in review.front if r.candidate.pruning):
        e = unpruned.evaluation
        figures = [
            f"{short_name(o.name)} {format_value(o.name, per_sample(o.name, v, review.batch_size), compact=True)}"
            for o, v in zip(review.objectives, e.values, strict=True)
        ]
        figures += [
            f"{short_name(k)} {format_value(k, e.metrics[k], compact=True)}" for k in e.metrics if k.startswith("test_")
        ]
        lines.append(
            f"the unpruned model (candidate {unpruned.candidate.id}: {', '.join(figures)}) is not on the front: "
            + (
                "a listed candidate is as good in every objective and better in one"
                if unpruned.feasible
                else "it does not meet "
                + ", ".join(
                    c.name
                    for c, v in zip(review.constraints, unpruned.evaluation.constraints, strict=True)
                    if c.violation(v) > 0
                )
            )
        )
    lines.append("every column: --json; one candidate: --candidate ID")
    return "\n".join(lines)


_SENSES = {"<=": "≤", ">=": "≥"}


def _parts(row: Row) -> int:
    return row.candidate.partition.parts if row.candidate.partition is not None else 1


def row_json(review: Review, row: Row) -> dict[str, Any]:
    e = row.evaluation
    values = dict(zip([o.name for o in review.objectives], e.values, strict=False))
    out: dict[str, Any] = {
        "candidate_id": row.candidate.id,
        "trial": row.trial,
        "searcher": row.candidate.searcher,
        "state": e.state,
        "feasible": row.feasible,
        "values": values,
        "per_sample": {n: per_sample(n, v, review.batch_size) for n, v in values.items() if n in PER_BATCH},
        "constraints": {
            constraint_key(c): {"value": v, "violation": c.violation(v)}
            for c, v in zip(review.constraints, e.constraints, strict=False)
        },
        "metrics": {k: json_float(v) for k, v in e.metrics.items()},
        "parts": _parts(row),
    }
    if "level" in e.metrics:
        out["level"] = review.config.accuracy.levels()[int(e.metrics["level"])]
    if row.candidate.id in review.same_plans:
        out["same_plans"] = review.same_plans[row.candidate.id]
    if not e.ok:
        out["message"] = e.message
    return out


def review_json(review: Review) -> dict[str, Any]:
    """The review as plain JSON: objectives, constraints, counts, normaliser, front and hypervolume history."""
    return {
        "run": str(review.folder),
        "study": review.study_name,
        "objectives": [o.to_json() for o in review.objectives],
        "constraints": [c.to_json() for c in review.constraints],
        "counts": review.counts(),
        "costed_at": {"batch_size": review.batch_size, "micro_batches": review.config.latency.micro_batches},
        "normalizer": None if review.normalizer is None else review.normalizer.to_json(),
        "normalizer_source": review.normalizer_source,
        "front": [row_json(review, r) for r in review.front],
        "hypervolume": [{"trial": t, "hypervolume": v} for t, v in review.hypervolume],
    }
