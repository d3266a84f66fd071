"""The baseline split job behind `decomp split`: load a (pruned) model, choose a partition plan
(the optimal pipeline by DP, a graph-partitioning DAG split, or the user's plan file), cut the model,
export the parts and verify the export against the unpartitioned model.

A pipeline split balances, by `balance`: MACs (`macs`); op times profiled on this machine with
`threads` torch threads (`time`); or those op times tuned by running candidate splits side by side
(`run`, `decomp.partition.tune_pipeline`), which needs a runtime: the caller passes `run_stages`, a
function that runs a `SplitModel` as a pipeline and returns each part's seconds per call (the CLI's
runs it on Ray actors).

With `width` (`WidthSplit`s), layers are split across parts instead (`decomp.partition.width`): the model
is rewritten so each split's slices are layers of their own, and way k of every split runs on part k's
device (`width_plan`); the export is verified against the model as it was."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from decomp.build import build_graph
from decomp.errors import DecompError, ExportError, InvalidPlanError
from decomp.graph import ModelGraph
from decomp.partition.baselines import METHODS, StageCost, graph_partition, optimal_pipeline, pipeline_stage_times
from decomp.partition.export import export_split, verify_export
from decomp.partition.metrics import PartitionMetrics, partition_metrics
from decomp.partition.plan import MODES, PartitionPlan
from decomp.partition.split import SplitModel, split_model
from decomp.partition.tune import tune_pipeline
from decomp.partition.width import WidthSplit, split_width, width_plan
from decomp.specs import load_model
from decomp.timing import annotate_op_times, op_times

__all__ = ["BALANCES", "SplitRequest", "SplitSummary", "TuningRun", "export_verified", "run_split"]

BALANCES = ("macs", "time", "run")
RunStages = Callable[[SplitModel], Sequence[float]]

VERIFY_TOLERANCE = 1e-5  # float32 max abs difference an export must stay within
WIDTH_TOLERANCE = 1e-4  # ... with width splits, whose sums add the same terms in another order


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
    balance: str = "macs"  # pipeline mode: what the stages balance (see the module docstring)
    threads: int = 1  # torch threads per stage, for balance time / run
    tune_steps: int = 4  # balance run: candidate splits run at most
    width: tuple[WidthSplit, ...] = ()  # layers split across parts (then the plan comes from the splits)

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
        if self.balance not in BALANCES:
            raise InvalidPlanError(f"unknown balance {self.balance!r}; choose one of {', '.join(BALANCES)}")
        if self.balance != "macs" and (self.mode != "pipeline" or self.plan is not None):
            raise InvalidPlanError(
                f"--balance {self.balance} chooses pipeline cut points; it needs --mode pipeline and no --plan"
            )
        if self.width and (self.plan is not None or self.balance != "macs" or self.mode != "dag"):
            raise InvalidPlanError("--width makes the plan itself: it needs --mode dag, no --plan and no --balance")
        if self.width and self.parts != max(s.ways for s in self.width):
            raise InvalidPlanError(
                f"--parts {self.parts} but the width splits run in {max(s.ways for s in self.width)} ways; make "
                "them agree (one device per way)"
            )
        if self.threads < 1 or self.tune_steps < 1:
            raise DecompError(f"--threads and tune steps must be >= 1, got {self.threads} and {self.tune_steps}")


@dataclass(frozen=True)
class TuningRun:
    """A candidate split run while tuning (`balance='run'`): its cut points (op positions where a stage
    starts), each stage's seconds per call, and whether it is the split kept."""

    cuts: tuple[int, ...]
    stage_seconds: tuple[float, ...]
    kept: bool

    def to_json(self) -> dict[str, Any]:
        return {"cuts": list(self.cuts), "stage_seconds": list(self.stage_seconds), "kept": self.kept}


@dataclass(frozen=True)
class SplitSummary:
    """What a `decomp split` job did (`to_json()` for `--json`): the request, the export folder `out`, the
    partition plan and its metrics, how many parts the export holds, each pipeline stage's estimated
    seconds (pipeline plans; under the stage cost the split balanced), the candidate splits run while
    tuning (in the order they ran; `balance='run'` only), and the export's largest difference from the
    unpartitioned model."""

    request: SplitRequest
    out: Path
    plan: PartitionPlan
    parts_in_export: int
    metrics: PartitionMetrics
    stage_seconds: tuple[float, ...] | None
    tuning_runs: tuple[TuningRun, ...] | None
    max_abs_diff: float
    graph: ModelGraph | None = field(default=None, compare=False, repr=False)  # the graph the plan names

    def to_json(self) -> dict[str, Any]:
        return {
            "request": asdict(self.request),
            "out": str(self.out),
            "plan": self.plan.to_json(),
            "parts_in_export": self.parts_in_export,
            "metrics": self.metrics.to_json(),
            "stage_seconds": list(self.stage_seconds) if self.stage_seconds is not None else None,
            "tuning_runs": [t.to_json() for t in self.tuning_runs] if self.tuning_runs is not None else None,
            "max_abs_diff": self.max_abs_diff,
        }


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


def export_verified(split, out, module, tolerance: float = VERIFY_TOLERANCE, **export_options) -> tuple[Path, float]:
    """Export `split` to `out` (`export_split` options) and check it against the unpartitioned `module` on
    the split's example inputs; returns the folder and the max abs difference. Above `tolerance` it is an
    error (the export is kept for inspection)."""
    folder = export_split(split, out, **export_options)
    diff = verify_export(folder, module, split.example_inputs)
    if diff > tolerance:
        raise ExportError(
            f"the export in {folder} differs from the unpartitioned model by {diff:.3g} (more than "
            f"{tolerance}); it was kept for inspection. Report the model: a part did not export faithfully"
        )
    return folder, diff


def run_split(
    request: SplitRequest, out: str | Path, overwrite: bool = False, run_stages: RunStages | None = None
) -> SplitSummary:
    """Split, export to `out` (written atomically) and verify; returns the summary (its metrics, stage
    seconds and tuning runs are also the manifest's expected costs). `run_stages` runs a candidate split
    for `balance='run'` (see the module docstring)."""
    if request.balance == "run" and run_stages is None:
        raise DecompError("balance 'run' runs candidate splits: pass run_stages (the decomp CLI runs them on Ray)")
    loaded, pruning_plan = _model(request)
    module, inputs = loaded.module, loaded.example_inputs
    original, tracer, widened = module, loaded.tracer, None
    if request.width:
        widened = split_width(module, inputs, request.width, tracer=tracer)
        module = widened.module
    graph = build_graph(module, inputs, tracer, name=str(loaded.spec or request.model))
    cost, tuning = StageCost(), None
    if widened is not None:
        plan = width_plan(graph, widened)
    elif request.balance == "macs":
        plan = _plan(request, graph)
    else:
        annotate_op_times(graph, op_times(module, inputs, tracer=loaded.tracer, threads=request.threads))
        cost = StageCost(bytes_per_s=1e9, measured=True)  # ~1 GB/s between processes on one machine
        plan = optimal_pipeline(graph, request.parts, cost)
        if request.balance == "run":
            assert run_stages is not None

            def run(candidate: PartitionPlan) -> Sequence[float]:
                return run_stages(split_model(module, inputs, candidate, tracer=loaded.tracer))

            trials = tune_pipeline(graph, request.parts, run, cost, steps=request.tune_steps)
            plan = trials[0].plan
            tuning = tuple(  # in the order they ran; the kept split is the best balanced
                TuningRun(tuple(t.plan.cuts(graph)), tuple(t.stage_seconds), t is trials[0])
                for t in sorted(trials, key=lambda t: t.step)
            )
    metrics = partition_metrics(graph, plan)
    stage_times = pipeline_stage_times(graph, plan, cost) if plan.mode == "pipeline" else None
    split = split_model(module, inputs, plan, tracer=tracer)
    costs = {
        "width_splits": [w.to_json() for w in request.width],
        "metrics": metrics.to_json(),
        "stage_cost_model": asdict(cost),
        "stage_seconds": stage_times,
        "tuning_runs": [t.to_json() for t in tuning] if tuning is not None else None,
    }
    folder, diff = export_verified(
        split,
        out,
        original,
        WIDTH_TOLERANCE if widened is not None else VERIFY_TOLERANCE,
        source=str(loaded.spec) if loaded.spec else request.model,
        pruning_plan=pruning_plan,
        onnx=request.onnx,
        expected_costs=costs,
        overwrite=overwrite,
    )
    return SplitSummary(
        request=request,
        out=folder,
        plan=plan,
        parts_in_export=len(split.layout.parts),
        metrics=metrics,
        stage_seconds=tuple(stage_times) if stage_times is not None else None,
        tuning_runs=tuning,
        max_abs_diff=diff,
        graph=graph,
    )
