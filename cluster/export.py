"""Exporting a run's candidate: the run's model pruned with its plan, the weights its accuracy was measured
with loaded, split with its partition plan, exported and verified (`decomp export RUN --candidate ID`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster.config import JobConfig
from cluster.results import weights_path
from cluster.review import Review, Row, review_run, row_json
from cluster.runs import base_weights
from cluster.task import MEASURED, job_model
from decomp.errors import SpecError
from decomp.partition.plan import PartitionPlan

__all__ = ["export_candidate"]


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
    search = row_json(review, row) | {"run": str(review.folder), "study": review.study_name}
    if review.config.data and weights is not None:  # what `decomp eval` needs to score it on the same samples
        search["measured_on"] = _measured_on(review.config)
    target, diff = export_verified(
        split_model(module, inputs, plan, tracer=built.loaded.tracer, leaf_modules=review.config.leaf_modules),
        out,
        module,
        source=review.config.model,
        pruning_plan=pruned.plan if pruned is not None else None,
        expected_costs={
            "metrics": metrics.to_json(),
            "search": search,
            # what the search priced: micro-batches of the graph's batch, `decomp run`'s defaults
            "runtime": {
                "batch_size": review.config.latency.batch_size * review.config.latency.micro_batches,
                "micro_batches": review.config.latency.micro_batches,
                "replicas": int(row.evaluation.metrics.get("replicas", 1)),
            },
        },
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
