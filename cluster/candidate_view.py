"""One candidate of a run read against the run's model graph: its keep ratios per coupling group, its layer
sparsities, and its parts with their MACs after pruning (`decomp pareto RUN --candidate ID`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster.review import Review, Row, row_json
from cluster.task import job_model
from decomp.graph import ModelGraph
from decomp.partition.plan import PartitionPlan

__all__ = ["CandidateView", "candidate_json", "candidate_view"]


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
    return row_json(review, view.row) | {
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
