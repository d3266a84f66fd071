"""What evaluates a candidate: the `Task` protocol and the task of a job file (`ModelTask`). Ray-free.

A `Task` is a picklable recipe. The driver calls `space()` once for the search space; every evaluator
receives a copy of the task, calls `setup()` once before its first candidate (load the model and data,
build the costed graph) and then `evaluate(candidate, level)` per candidate and fidelity level (the driver
decides which candidates climb, `search.fidelity`). `ModelTask(config)` is the task of a job file: cheap
metrics from the candidate cost model, and where an objective or constraint is measured (`accuracy`,
`agreement`) the plan applied physically and measured at the level (`cluster.measure`), with the weights.

An evaluation that raises comes back from the evaluator as an `EvaluationError` (the driver retries it, then
records it as failed); a plan that does not fit the model comes back as a failed `Evaluation` at once
(retrying would fail the same way). `job_model` is the one way a job's model becomes its costed,
group-annotated graph: the search, the review and the export all build it with it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from cluster.config import JobConfig
from cluster.measure import Measurer, check_measurable, module_bytes
from decomp.errors import DecompError, SpecError
from decomp.graph import ModelGraph
from decomp.pruning import GroupIndex
from decomp.specs import LoadedModel
from search.records import Candidate, Evaluation
from search.space import Space

__all__ = ["MEASURED", "EvaluationError", "JobModel", "Measured", "ModelTask", "Task", "job_model", "load_job_model"]

MEASURED = ("accuracy", "agreement")  # quantities only a run of the pruned model gives


@runtime_checkable
class Task(Protocol):
    """What an evaluator runs. Must pickle: the driver sends one copy to every actor."""

    def space(self) -> Space:
        """The search space (called once, in the driver)."""

    def setup(self) -> None:
        """Load what evaluations need; called once per evaluator, before its first `evaluate`."""

    levels: tuple[str, ...]  # the fidelity levels `evaluate` takes, cheapest first (one name: no levels)

    def evaluate(self, candidate: Candidate, level: int) -> Evaluation | Measured:
        """The candidate's objective and constraint values at `levels[level]`, in the job's order (with the
        weights that gave them, where the task measured a model)."""


@dataclass(frozen=True)
class Measured:
    """An evaluation and the weights of the pruned model it measured (safetensors bytes), for the driver to
    keep where the candidate earns it (the top level, or the front)."""

    evaluation: Evaluation
    weights: bytes | None = None


@dataclass(frozen=True)
class EvaluationError:
    """An evaluation raised: the message (type: text) and the traceback, for the driver to retry or record.
    `fatal`: the evaluator could not set up because of the job itself (a bad spec); retrying cannot help."""

    candidate_id: int
    message: str
    traceback: str = ""
    fatal: bool = False


@dataclass
class JobModel:
    """A job's model as the search sees it: the loaded model, the inputs the graph was built at, and the
    costed op graph annotated with the coupling groups of `index`."""

    loaded: LoadedModel
    inputs: tuple[torch.Tensor, ...]
    graph: ModelGraph
    index: GroupIndex


def load_job_model(config: JobConfig, base: Path | None = None, weights: Path | None = None) -> LoadedModel:
    """The model the job names, its weights loaded (relative paths read against `base`; `weights`, a run's
    trained base, in place of the job's own), with its example inputs and the job's tracer: what the search
    traces and what an export prunes."""
    from dataclasses import replace

    from decomp.specs import load_model

    shapes = [tuple(config.input_shape)] if config.input_shape is not None else None
    with config.importing(base):
        loaded = load_model(config.model, weights=weights or _resolve(config.weights, base), input_shapes=shapes)
    return replace(loaded, tracer=config.tracer) if config.tracer else loaded


def job_model(
    config: JobConfig, base: Path | None = None, batch: int | None = None, weights: Path | None = None
) -> JobModel:
    """Load the job's model (its weights, or `weights`; relative paths read against `base`) and build its costed
    graph with the job's tracer and leaf modules, at `batch` samples per input (copies of the first) or at the
    model's example batch."""
    from decomp.build import build_graph
    from decomp.pruning import annotate_graph, find_groups

    loaded = load_job_model(config, base, weights)
    inputs = loaded.example_inputs if batch is None else _at_batch(loaded.example_inputs, batch)
    graph = build_graph(loaded.module, inputs, loaded.tracer, config.leaf_modules, name=config.model)
    index = _exact_groups(loaded.module, inputs, find_groups(loaded.module, inputs).keeping(config.keep), config)
    annotate_graph(graph, index)
    return JobModel(loaded, inputs, graph, index)


def _exact_groups(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], index: GroupIndex, config: JobConfig):
    """The groups the pruning equivalence check accepts at the space's lowest keep level: a group it refuses
    would only make the candidates that prune it fail, so it leaves the space (listed in `index.skipped`)."""
    from decomp.pruning import apply_plan, plan_for_ratio

    lowest = min(config.joint_config().levels)
    if not len(index) or lowest >= 1.0:
        return index
    one = tuple(x[:1] for x in inputs)
    refused = apply_plan(module, plan_for_ratio(index, 1.0 - lowest), one, skip_failing=True, index=index).skipped
    return index.without(refused) if refused else index


class ModelTask:
    """The task of a job file (see the module docstring). Relative file names in the config are read
    against `base` (the job file's folder); only the config travels to the actors."""

    def __init__(self, config: JobConfig, base: str | Path | None = None) -> None:
        from decomp.data import parse_data_spec

        self.config = config
        self.base = Path(base) if base is not None else None
        self.objectives = config.objective_records()
        self.constraints = config.constraint_records()
        names = [o.name for o in self.objectives] + [c.name for c in self.constraints]
        self.measured = tuple(n for n in MEASURED if n in names)
        check_measurable(config, self.measured)
        self.levels = config.accuracy.levels() if self.measured else ("costs",)
        if config.data:
            parse_data_spec(config.data)  # a typo fails in the driver, not in every actor
        for key, name in (
            ("weights", config.weights),
            ("latency.table", config.latency.table),
            ("latency.calibration", config.latency.calibration),
        ):
            path = _resolve(name, self.base)
            if path is not None and not path.is_file():
                raise SpecError(
                    f"{key}: no file at {path}; fix the path (relative paths are read from the job file's folder)"
                )
        self.weights: Path | None = None  # the run's trained base, where it has one (`use_base`)
        self._problem: _Problem | None = None
        self._ready = False

    def use_base(self, weights: Path) -> None:
        """Prune every candidate from these weights (the run's trained base) instead of the job's own."""
        from decomp.specs import load_weights

        self.weights = Path(weights)
        if self._problem is not None:  # the space was built already: its model takes the weights in place
            load_weights(self._problem.model, self.weights)
            self._problem.costs = self._problem.measurer = None  # importances and reference from them too
            self._ready = False

    def __getstate__(self) -> dict[str, Any]:
        # what was built stays where it was built; each actor builds its own in setup()
        return {**self.__dict__, "_problem": None, "_ready": False}

    def space(self) -> Space:
        return self._built(evaluation=False).space

    def setup(self) -> None:
        if not self._ready:
            self._problem = self._built(evaluation=True)
            self._ready = True

    def evaluate(self, candidate: Candidate, level: int = 0) -> Measured:
        self.setup()
        problem = self._problem
        start = time.perf_counter()
        weights = None
        try:
            metrics = dict(problem.costs(candidate))
            if self.measured:
                figures, pruned = problem.measurer.measure(candidate, self.levels[level])
                metrics.update(figures, level=float(level))
                weights = module_bytes(pruned)
        except DecompError as err:  # the plan does not fit the model: the same every time
            return Measured(
                Evaluation.failed(candidate.id, f"{type(err).__name__}: {err}", time.perf_counter() - start)
            )
        names = [o.name for o in self.objectives] + [c.name for c in self.constraints]
        evaluation = Evaluation.of(
            candidate.id,
            [metrics[o.name] for o in self.objectives],
            [metrics[c.name] for c in self.constraints],
            metrics,
            wall_time=time.perf_counter() - start,
            names=names,
        )
        return Measured(evaluation, weights)

    def _built(self, evaluation: bool) -> _Problem:
        with self.config.importing(self.base):  # python: data modules too
            if self._problem is None:
                self._problem = _Problem.build(self.config, self.base, self.weights)
            if evaluation and self._problem.costs is None:
                self._problem.prepare(self.measured)
        return self._problem


class _Problem:
    """A job's model, costed and group-annotated graph, space and (in evaluators) costs and test data."""

    def __init__(self) -> None:
        self.costs = None
        self.measurer: Measurer | None = None

    @classmethod
    def build(cls, config: JobConfig, base: Path | None, weights: Path | None = None) -> _Problem:
        from search.joint import JointSpace

        self = cls()
        self.config, self.base = config, base
        built = job_model(config, base, config.latency.batch_size, weights)
        self.model, self.inputs, self.graph, self.index = built.loaded.module, built.inputs, built.graph, built.index
        self.cluster = config.cluster_spec(base)
        self.space = JointSpace(self.graph, len(self.cluster.devices), config.joint_config())
        return self

    def _path(self, name: str | None) -> Path | None:
        return _resolve(name, self.base)

    def prepare(self, measured: Sequence[str]) -> None:
        """What evaluations need beyond the space: channel importances, the cost model, test data."""
        from decomp.latency import CostModel
        from decomp.pruning import channel_importance
        from search.objectives import CostEvaluator

        criterion = self.config.joint_config().criterion
        importances = {}
        for group in self.index:
            try:
                importances[group.id] = channel_importance(self.index, group.id, criterion).tolist()
            except DecompError:  # e.g. taylor without gradients: rank by magnitude for the proxy
                importances[group.id] = channel_importance(self.index, group.id, "l1").tolist()
        latency = self.config.latency
        self.costs = CostEvaluator(
            CostModel(
                self.graph,
                self._latency_model(self.cluster),
                latency.micro_batches,
                importances=importances,
                replicas=latency.replicas,
            )
        )
        if measured:
            self.measurer = Measurer(self.config, self.model, self.inputs, measured, self.index)

    def _latency_model(self, cluster):
        from decomp.latency import LatencyModel, OpTable, default_table_path, load_calibration

        latency = self.config.latency
        tables, calibrations = {}, {}
        for kind in cluster.kinds:  # kinds named by a device key reuse that key's cached table
            path = default_table_path(kind.name)
            if path.is_file():
                tables[kind.name] = OpTable.load(path)
        if latency.table:
            table = OpTable.load(self._path(latency.table))
            tables[_kind_for(cluster, table.device, "latency.table")] = table
        if latency.calibration:
            import json

            path = self._path(latency.calibration)
            device = json.loads(path.read_text()).get("device", "") if path.is_file() else ""
            calibrations[_kind_for(cluster, device, "latency.calibration")] = load_calibration(path)
        return LatencyModel(cluster, tables, calibrations)


def _resolve(name: str | None, base: Path | None) -> Path | None:
    if name is None:
        return None
    path = Path(name).expanduser()
    return path if path.is_absolute() or base is None else base / path


def _at_batch(inputs: Sequence[torch.Tensor], batch: int) -> tuple[torch.Tensor, ...]:
    """The example inputs with `batch` samples (copies of the first): the graph is costed per micro-batch."""
    return tuple(x[:1].expand(batch, *x.shape[1:]).contiguous() for x in inputs)


def _kind_for(cluster, device: str, where: str) -> str:
    """The cluster's device kind a table or calibration measured on `device` prices."""
    names = [k.name for k in cluster.kinds]
    if device in names:
        return device
    if len(names) == 1:
        return names[0]
    raise SpecError(
        f"{where} was measured on {device!r}, and cluster {cluster.name!r} has several device kinds "
        f"({', '.join(names)}); name a kind after the device key, or use a one-kind cluster"
    )
