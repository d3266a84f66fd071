"""Reviewing a search run: its Pareto front, hypervolume over time, one candidate's plans, its export, and
optuna-dashboard on the run's storage.

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
from cluster.results import weights_path
from cluster.runs import NORMALIZER_ATTR, base_weights, open_study, storage_of
from cluster.task import MEASURED, job_model
from cluster.units import PER_BATCH, format_value, per_sample, short_name
from decomp.errors import DecompError, SpecError
from decomp.graph import ModelGraph
from decomp.partition.plan import PartitionPlan
from search.front import FrontTracker
from search.pareto import Normalizer, minimized, non_dominated
from search.records import Candidate, Constraint, Evaluation, Objective, json_float
from search.study import constraint_key, trials_to_records

__all__ = [
    "CandidateView",
    "Review",
    "Row",
    "candidate_json",
    "candidate_view",
    "dashboard_app",
    "export_candidate",
    "front_note",
    "front_rows",
    "review_json",
    "review_run",
    "serve",
]


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


def _row_json(review: Review, row: Row) -> dict[str, Any]:
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
        "front": [_row_json(review, r) for r in review.front],
        "hypervolume": [{"trial": t, "hypervolume": v} for t, v in review.hypervolume],
    }


# -- one candidate ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CandidateView:
    """One candidate's plans, read against the run's model graph: per-group keep ratios (`groups`),
    per-layer sparsity (`layers`), and per-part op counts and MACs after pruning (`parts`, per micro-batch and
    per sample)."""

    row: Row
    on_front: bool
    graph: ModelGraph
    plan: PartitionPlan
    groups: list[dict[str, Any]]
    layers: list[dict[str, Any]]
    parts: list[dict[str, Any]]
    same_as: int | None = None  # the front lists the candidate with the same plans under this id


def candidate_view(review: Review, candidate_id: int) -> CandidateView:
    from decomp.pruning import Estimator, PruningPlan

    row = review.find(candidate_id)
    graph = job_model(review.config, batch=review.config.latency.batch_size).graph  # the graph the plans name
    pruning = row.candidate.pruning or PruningPlan()
    plan = row.candidate.partition or PartitionPlan.from_assignment(
        dict.fromkeys(graph.compute_nodes(), 0), "pipeline", graph=graph
    )
    plan.validate(graph)
    estimator = Estimator(graph)
    estimate = estimator(pruning)
    asked = {c.group: c for c in pruning.groups}
    groups = []
    for gid in _group_order(graph):
        info, choice = graph.nx.graph["groups"][gid], asked.get(gid)
        groups.append(
            {
                "group": gid,
                "kind": info["kind"],
                "channels": info["channels"],
                "asked": 1.0 if choice is None else choice.keep_ratio,  # None: explicit channel indices
                "kept": round(estimate.fractions[gid] * info["channels"]),
                "keep_ratio": estimate.fractions[gid],
            }
        )
    layers = [{"layer": s.layer, "sparsity": s.sparsity, "pattern": s.pattern} for s in pruning.layers]
    total = float(estimate.macs.sum()) or 1.0
    parts = []
    for k, members in enumerate(plan.members()):
        macs = float(sum(estimate.macs[estimator.index[n]] for n in members))
        parts.append(
            {
                "part": k,
                "ops": len(members),
                "macs": macs,
                "macs_per_sample": macs / review.batch_size,
                "macs_share": macs / total,
            }
        )
    same_as = next((kept for kept, ids in review.same_plans.items() if candidate_id in ids), None)
    on_front = same_as is not None or any(r.candidate.id == candidate_id for r in review.front)
    return CandidateView(row, on_front, graph, plan, groups, layers, parts, same_as)


def candidate_json(review: Review, view: CandidateView) -> dict[str, Any]:
    """One candidate as plain JSON: its trial, values and constraints, keep ratios, parts and both plans."""
    pruning = view.row.candidate.pruning
    return _row_json(review, view.row) | {
        "on_front": view.on_front,
        "same_plans_as": view.same_as,
        "genome": list(view.row.candidate.genome),
        "groups": view.groups,
        "layers": view.layers,
        "partition": view.parts,
        "pruning_plan": None if pruning is None else pruning.to_json(),
        "partition_plan": view.plan.to_json(),
    }


def _group_order(graph: ModelGraph) -> list[str]:
    """Coupling groups in the order their first op runs (groups no op names last)."""
    groups = graph.nx.graph.get("groups") or {}
    first = dict.fromkeys(groups, len(graph))
    for position, name in enumerate(graph.order()):
        gid = graph[name].get("group")
        if gid in first:
            first[gid] = min(first[gid], position)
    return sorted(groups, key=first.__getitem__)


# -- export -----------------------------------------------------------------------------------------
def export_candidate(folder: str | Path, candidate_id: int, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Physically prune the run's model with the candidate's pruning plan, load the weights its accuracy was
    measured with (where the run measured accuracy), split it with its partition plan, export the parts to
    `out` (the `decomp split` format) and verify them against the unpartitioned pruned model; returns a
    summary. A failed candidate, one whose measured weights were not kept, or a difference above the
    tolerance is an error. The model is built at the batch the search costed it at, so the partition plan
    names the ops the export traces."""
    from safetensors.torch import load_model

    from decomp.build import build_graph
    from decomp.partition import partition_metrics, split_model
    from decomp.partition.job import export_verified
    from decomp.pruning import apply_plan

    review = review_run(folder)
    row = review.find(candidate_id)
    if not row.evaluation.ok:
        raise SpecError(
            f"candidate {candidate_id} (trial {row.trial}) failed: {row.evaluation.message}; export a complete "
            f"one{_suggest(review.front or [r for r in review.rows if r.evaluation.ok])}"
        )
    weights = _kept_weights(review, row)
    base = base_weights(review.folder, review.config) if weights is None else None  # a trained base, if any
    built = job_model(review.config, batch=review.config.latency.batch_size, weights=base)
    inputs = built.inputs
    pruned = apply_plan(built.loaded.module, row.candidate.pruning, inputs) if row.candidate.pruning else None
    module = pruned.module if pruned is not None else built.loaded.module
    if weights is not None:
        load_model(module, str(weights))
    graph = build_graph(module, inputs, built.loaded.tracer, review.config.leaf_modules, name=review.config.model)
    plan = row.candidate.partition or PartitionPlan.from_assignment(
        dict.fromkeys(graph.compute_nodes(), 0), "pipeline", graph=graph
    )
    metrics = partition_metrics(graph, plan.validate(graph))
    search = _row_json(review, row) | {"run": str(review.folder), "study": review.study_name}
    if review.config.data and weights is not None:  # what `decomp eval` needs to score it on the same samples
        search["measured_on"] = _measured_on(review.config)
    target, diff = export_verified(
        split_model(module, inputs, plan, tracer=built.loaded.tracer, leaf_modules=review.config.leaf_modules),
        out,
        module,
        source=review.config.model,
        pruning_plan=pruned.plan if pruned is not None else None,
        expected_costs={"metrics": metrics.to_json(), "search": search},
        overwrite=overwrite,
    )
    params = sum(p.numel() for p in built.loaded.module.parameters())
    return {
        "run": str(review.folder),
        "candidate": candidate_id,
        "trial": row.trial,
        "out": str(target),
        "parts": plan.parts,
        "params_before": params,
        "params_after": sum(p.numel() for p in module.parameters()),
        "values": search["values"],
        "per_sample": search["per_sample"],
        "batch_size": review.batch_size,
        "metrics": search["metrics"],
        "max_abs_diff": diff,
        "feasible": row.feasible,
        "level": search.get("level"),
        "weights": None if weights is None else str(weights),
    }


def _measured_on(config: JobConfig) -> dict[str, Any]:
    """How the run measured accuracy: its data spec, the validation share and seed that carved the validation
    split, and how many samples of each split it read at most."""
    accuracy = config.accuracy
    return {
        "data": config.data,
        "validation": accuracy.validation,
        "seed": config.searcher.seed,
        "max_samples": accuracy.max_samples,
    }


def _kept_weights(review: Review, row: Row) -> Path | None:
    """The weights the candidate's measured objectives were measured with (None where the run measured
    nothing, so the pruned weights are what it costed); an error when they were not kept."""
    if not any(o.name in MEASURED for o in review.objectives) and not any(
        c.name in MEASURED for c in review.constraints
    ):
        return None
    original = int(row.evaluation.metrics.get("duplicate_of", row.candidate.id))
    path = weights_path(review.folder, original)
    if not path.is_file():
        kept = [r for r in review.rows if r.evaluation.ok and weights_path(review.folder, r.candidate.id).is_file()]
        raise SpecError(
            f"candidate {row.candidate.id}'s measured weights were not kept (a run keeps those of candidates at the "
            f"top fidelity level or on the front when they were recorded); without them the export would not "
            f"compute what the run measured. Export one that has them{_suggest(kept)}"
        )
    return path


def _suggest(rows: list[Row]) -> str:
    ids = [r.candidate.id for r in rows]
    return f", e.g. {', '.join(map(str, ids[:8]))}" if ids else ""


# -- dashboard --------------------------------------------------------------------------------------
def dashboard_app(folder: str | Path):
    """optuna-dashboard's WSGI app on the run's storage (the run and its study must exist)."""
    from optuna_dashboard import wsgi

    config, _ = open_study(folder)
    return wsgi(storage_of(Path(folder), config))


def serve(app, host: str, port: int) -> None:
    """Serve a WSGI app until interrupted (wsgiref, as optuna-dashboard's own server; request log muted)."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class _Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    try:
        server = make_server(host, port, app, handler_class=_Quiet)
    except OSError as err:
        raise SpecError(f"cannot listen on {host}:{port} ({err.strerror}); pass another --port or --host") from None
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
