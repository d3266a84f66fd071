"""The baseline split job behind `decomp split`: load a (pruned) model, choose a partition plan
(the optimal pipeline by DP, a graph-partitioning DAG split, or the user's plan file), cut the model,
export the parts and verify the export against the unpartitioned model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from decomp.build import build_graph
from decomp.errors import DecompError, ExportError, InvalidPlanError
from decomp.partition.baselines import METHODS, StageCost, graph_partition, optimal_pipeline, pipeline_stage_times
from decomp.partition.export import export_split, verify_export
from decomp.partition.metrics import partition_metrics
from decomp.partition.plan import MODES, PartitionPlan
from decomp.partition.split import split_model
from decomp.specs import load_model

__all__ = ["SplitRequest", "run_split"]

VERIFY_TOLERANCE = 1e-5  # float32 max abs difference an export must stay within


@dataclass(frozen=True)
class SplitRequest:
    """What to split and how. `plan`: a partition plan JSON file (then `parts` and `mode` must agree
    with it or be left at their defaults); `pruned`: a `decomp prune` output folder whose pruned model
    is split instead of `model`'s dense one."""

    model: str
    parts: int = 2
    mode: str = "pipeline"
    plan: str | None = None
    pruned: str | None = None
    method: str = "auto"  # dag mode: graph partitioning method
    weights: str | None = None
    input_shapes: tuple[tuple[int, ...], ...] = field(default=())
    onnx: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidPlanError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.method not in METHODS:
            raise InvalidPlanError(
                f"unknown graph partition method {self.method!r}; choose one of {', '.join(METHODS)}"
            )
        if self.pruned is not None and (self.input_shapes or self.weights):
            raise DecompError("a pruned folder brings its own weights and input shape; drop --weights/--input-shape")
        if self.parts < 1:
            raise InvalidPlanError(f"--parts must be at least 1, got {self.parts}")


def _model(request: SplitRequest):
    """The loaded model (pruned where asked) and its pruning plan (or None)."""
    if request.pruned is None:
        shapes = [tuple(s) for s in request.input_shapes] or None
        return load_model(request.model, weights=request.weights, input_shapes=shapes), None
    from decomp.pruning.job import open_pruned

    loaded, plan = open_pruned(request.pruned)
    if request.model and loaded.spec is not None and request.model != str(loaded.spec):
        raise DecompError(
            f"{request.pruned} holds a pruned {loaded.spec}, not {request.model}; name {loaded.spec} or leave MODEL out"
        )
    return loaded, plan


def _plan(request: SplitRequest, graph) -> PartitionPlan:
    if request.plan is not None:
        try:
            text = Path(request.plan).read_text()
        except OSError as err:
            raise InvalidPlanError(f"cannot read the plan file {request.plan}: {err}") from None
        plan = PartitionPlan.loads(text).validate(graph)
        if plan.mode != request.mode:
            raise InvalidPlanError(f"{request.plan} is a {plan.mode} plan, but --mode {request.mode} was given")
        return plan
    if request.mode == "pipeline":
        return optimal_pipeline(graph, request.parts)
    return graph_partition(graph, request.parts, method=request.method)


def export_verified(split, out, module, **export_options) -> tuple[Path, float]:
    """Export `split` to `out` (`export_split` options) and check it against the unpartitioned `module` on
    the split's example inputs; returns the folder and the max abs difference. Above `VERIFY_TOLERANCE`
    it is an error (the export is kept for inspection)."""
    folder = export_split(split, out, **export_options)
    diff = verify_export(folder, module, split.example_inputs)
    if diff > VERIFY_TOLERANCE:
        raise ExportError(
            f"the export in {folder} differs from the unpartitioned model by {diff:.3g} (more than "
            f"{VERIFY_TOLERANCE}); it was kept for inspection. Report the model: a part did not export faithfully"
        )
    return folder, diff


def run_split(request: SplitRequest, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Split, export to `out` (written atomically) and verify; returns the summary (also in the manifest's
    expected costs)."""
    loaded, pruning_plan = _model(request)
    module, inputs = loaded.module, loaded.example_inputs
    graph = build_graph(module, inputs, loaded.tracer, name=str(loaded.spec or request.model))
    plan = _plan(request, graph)
    metrics = partition_metrics(graph, plan)
    cost = StageCost()
    stage_times = pipeline_stage_times(graph, plan, cost) if plan.mode == "pipeline" else None
    split = split_model(module, inputs, plan, tracer=loaded.tracer)
    costs = {
        "metrics": metrics.to_json(),
        "stage_cost_model": asdict(cost),
        "stage_seconds": stage_times,
    }
    folder, diff = export_verified(
        split,
        out,
        module,
        source=str(loaded.spec) if loaded.spec else request.model,
        pruning_plan=pruning_plan,
        onnx=request.onnx,
        expected_costs=costs,
        overwrite=overwrite,
    )
    return {
        "request": asdict(request),
        "out": str(folder),
        "plan": plan.to_json(),
        "parts_in_export": len(split.layout.parts),
        "metrics": metrics.to_json(),
        "stage_seconds": stage_times,
        "max_abs_diff": diff,
    }
