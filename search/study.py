"""The result store: every evaluated candidate of every searcher as a trial of one Optuna study.

Whatever searcher proposed a candidate (random, greedy, evolutionary, Bayesian, RL), its evaluation is
recorded with `record_trial` as a finished trial of one study, so `optuna-dashboard` and Optuna's own
tools (`best_trials`, plots) work on a whole run. The study's directions are the objectives' own, and each
trial holds:

- values: the objective values in their natural units and directions (none for a failed trial);
- params: the genome, one parameter per gene with its distribution (integers for integer genes, floats
  otherwise; a fixed gene is a one-value distribution);
- constraints: one Optuna constraint value per constraint, the violation (0 when satisfied, > 0 by how
  much not; Optuna's convention is <= 0 feasible), named "<name> <sense> <bound>" and stored in the system
  attribute Optuna's constraint machinery reads (`constraints:<key>`, what `create_trial(constraints=...)`
  writes), so `best_trials` keeps feasible trials only and the dashboard marks infeasible ones;
- user attributes: `candidate_id`, `searcher`, `genome` (exact, in gene order), `pruning` / `partition`
  (the plans' JSON, when the candidate has them), `constraint_values` (raw, in constraint order),
  `metric:<name>` per extra metric, `wall_time`, and for failed trials `message` and the raw `values`
  (non-finite numbers as strings, as JSON has none); failed trials are FAIL trials with the message also in
  Optuna's `fail_reason` system attribute.

`trials_to_records` reads the candidates and evaluations back for review. The caller owns the storage (an
RDB URL, a journal file storage, or None for memory): this module does no file I/O.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from decomp.errors import SearchError
from decomp.partition.plan import PartitionPlan
from decomp.pruning.plan import PruningPlan
from search.objectives import OBJECTIVES
from search.records import Candidate, Constraint, Evaluation, Gene, Objective, json_float
from search.space import Space

__all__ = [
    "METRIC_PREFIX",
    "constraint_key",
    "create_study",
    "gene_distribution",
    "lower_levels",
    "record_trial",
    "trials_to_records",
]

METRIC_PREFIX = "metric:"
LOWER_ATTR = "lower_levels"


def gene_distribution(gene: Gene) -> BaseDistribution:
    """The Optuna distribution of a gene: integers for integer genes, floats otherwise (a fixed gene is a
    one-value distribution)."""
    if gene.integer:
        return IntDistribution(int(gene.low), int(gene.high))
    return FloatDistribution(float(gene.low), float(gene.high))


def constraint_key(constraint: Constraint) -> str:
    """The name a constraint's value has in a trial, e.g. `memory_bytes <= 1e+09`."""
    return f"{constraint.name} {constraint.sense} {constraint.bound:g}"


def create_study(
    objectives: Sequence[Objective],
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    load_if_exists: bool = False,
) -> optuna.Study:
    """A study whose directions follow `objectives` (and whose metric names are the objectives' names).

    With `load_if_exists`, an existing study of that name is reused when it has the same objectives, and is
    an error otherwise (recording into it would mix incomparable values)."""
    if not objectives:
        raise SearchError("a result study needs at least one objective")
    names = [o.name for o in objectives]
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            directions=[o.direction for o in objectives],
            load_if_exists=load_if_exists,
            sampler=optuna.samplers.RandomSampler(seed=0),  # the study records; it never samples
        )
    except optuna.exceptions.DuplicatedStudyError as error:
        raise SearchError(
            f"a study named {study_name!r} already exists in this storage; pass load_if_exists=True to resume "
            "recording into it, or choose another name"
        ) from error
    expected = [
        optuna.study.StudyDirection.MINIMIZE if o.sign > 0 else optuna.study.StudyDirection.MAXIMIZE for o in objectives
    ]
    if list(study.directions) != expected or (study.metric_names is not None and study.metric_names != names):
        raise SearchError(
            f"study {study.study_name!r} already exists with objectives {study.metric_names} "
            f"({', '.join(d.name.lower() for d in study.directions)}), not {names} "
            f"({', '.join(o.direction for o in objectives)}); record into a study with another name"
        )
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study


def record_trial(
    study: optuna.Study,
    candidate: Candidate,
    evaluation: Evaluation,
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint],
    space: Space,
    lower: Sequence[Evaluation] = (),
) -> FrozenTrial:
    """Add the evaluated `candidate` to `study` as a finished trial (see the module docstring for what it
    holds) and return the trial that was added (the storage gives it its number). `lower`: the candidate's
    results at the fidelity levels below the one `evaluation` is from, cheapest first."""
    if evaluation.candidate_id != candidate.id:
        raise SearchError(f"evaluation of candidate {evaluation.candidate_id} recorded for candidate {candidate.id}")
    if len(study.directions) != len(objectives):
        raise SearchError(
            f"study {study.study_name!r} has {len(study.directions)} objectives but {len(objectives)} were given "
            f"({', '.join(o.name for o in objectives)}); create it with search.study.create_study(objectives)"
        )
    if len(candidate.genome) != len(space.genes):
        raise SearchError(
            f"candidate {candidate.id} has {len(candidate.genome)} genes but the space has {len(space.genes)}; "
            "record it with the space it was asked from"
        )
    keys = [constraint_key(c) for c in constraints]
    if len(set(keys)) != len(keys):
        raise SearchError(
            f"constraints given more than once: {', '.join(sorted({k for k in keys if keys.count(k) > 1}))}"
        )
    evaluation.check_shape(objectives, constraints)

    user_attrs: dict[str, Any] = {
        "candidate_id": candidate.id,
        "searcher": candidate.searcher,
        "genome": list(candidate.genome),
        "constraint_values": [json_float(v) for v in evaluation.constraints],
        "wall_time": evaluation.wall_time,
    }
    if candidate.pruning is not None:
        user_attrs["pruning"] = candidate.pruning.to_json()
    if candidate.partition is not None:
        user_attrs["partition"] = candidate.partition.to_json()
    if lower:
        user_attrs[LOWER_ATTR] = [e.to_json() for e in lower]
    for name, value in evaluation.metrics.items():
        user_attrs[METRIC_PREFIX + name] = json_float(value)
    system_attrs: dict[str, Any] = {}
    complete = evaluation.ok and all(math.isfinite(v) for v in evaluation.values)
    if not complete:
        message = evaluation.message or "the evaluation's values are not finite"
        user_attrs["message"] = message
        user_attrs["values"] = [json_float(v) for v in evaluation.values]
        system_attrs["fail_reason"] = message

    params, distributions = {}, {}
    for gene, value in zip(space.genes, candidate.genome, strict=True):
        distributions[gene.name] = gene_distribution(gene)
        params[gene.name] = int(value) if gene.integer else float(value)
    try:
        trial = create_trial(
            state=TrialState.COMPLETE if complete else TrialState.FAIL,
            values=list(evaluation.values) if complete else None,
            params=params,
            distributions=distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
            constraints=(
                {k: c.violation(v) for k, c, v in zip(keys, constraints, evaluation.constraints, strict=True)}
                if complete and constraints
                else None
            ),
            intermediate_values=_intermediate([*lower, evaluation], objectives),
        )
        study.add_trial(trial)
    except ValueError as error:
        raise SearchError(
            f"candidate {candidate.id} could not be recorded ({error}); record it with the space it was asked from"
        ) from error
    return trial


def trials_to_records(study: optuna.Study) -> list[tuple[Candidate, Evaluation]]:
    """The (candidate, evaluation) of every finished trial `record_trial` wrote, in trial order. Trials it
    did not write (no `candidate_id` attribute) and unfinished ones are skipped."""
    records = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        attrs = trial.user_attrs
        if "candidate_id" not in attrs:
            continue
        candidate = Candidate(
            id=int(attrs["candidate_id"]),
            searcher=attrs.get("searcher", ""),
            genome=tuple(attrs.get("genome", trial.params.values())),
            pruning=PruningPlan.from_json(attrs["pruning"]) if attrs.get("pruning") is not None else None,
            partition=PartitionPlan.from_json(attrs["partition"]) if attrs.get("partition") is not None else None,
        )
        metrics = {k[len(METRIC_PREFIX) :]: float(v) for k, v in attrs.items() if k.startswith(METRIC_PREFIX)}
        constraint_values = tuple(float(v) for v in attrs.get("constraint_values", ()))
        wall_time = float(attrs.get("wall_time", 0.0))
        if trial.state == TrialState.COMPLETE:
            evaluation = Evaluation(candidate.id, tuple(trial.values), constraint_values, metrics, wall_time=wall_time)
        else:
            evaluation = Evaluation(
                candidate.id,
                tuple(float(v) for v in attrs.get("values", ())),
                constraint_values,
                metrics,
                state="failed",
                message=attrs.get("message", trial.system_attrs.get("fail_reason", "")),
                wall_time=wall_time,
            )
        records.append((candidate, evaluation))
    return records


def lower_levels(study: optuna.Study) -> dict[int, list[Evaluation]]:
    """Per recorded candidate id, its results at the fidelity levels below the one its trial holds (cheapest
    first); candidates evaluated at one level only are left out."""
    out = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        attrs = trial.user_attrs
        if "candidate_id" in attrs and attrs.get(LOWER_ATTR):
            out[int(attrs["candidate_id"])] = [Evaluation.from_json(e) for e in attrs[LOWER_ATTR]]
    return out


def _intermediate(results: Sequence[Evaluation], objectives: Sequence[Objective]) -> dict[int, float]:
    """Optuna intermediate values, one per fidelity level a candidate was measured at (none for one level):
    the first measured objective's value (accuracy, say), else the first objective's, where it is finite."""
    if len(results) < 2:
        return {}
    measured = [i for i, o in enumerate(objectives) if o.name in OBJECTIVES and OBJECTIVES[o.name].measured]
    index = measured[0] if measured else 0
    return {
        level: e.values[index]
        for level, e in enumerate(results)
        if e.ok and len(e.values) > index and math.isfinite(e.values[index])
    }
