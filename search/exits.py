"""The early-exit search space: where a model's exit sits (one of the given ops, the model split in two
parts there) and its confidence threshold, priced under the exit distribution measured on a validation
split (`decomp.partition.exits`).

Genes: `exit` (an index into `points`, op names in the order the model reaches them) and `threshold` (on
the exit's top softmax probability; above 1 the exit is closed: the plain 2-part split at that cut).

`ExitEvaluator` builds each exit point once (cached): an `ExitModel` with its head trained on the frozen
backbone, its outputs on the validation split (`exit_outputs`), the model with its exit split at the cut
(`exit_plan`) and priced by the latency model with op times measured here. A candidate then costs no
forward pass: `exit_report` on the cached outputs gives the accuracy with exits, the share p leaving at
the exit, MACs per input (expected) and the bytes per input the cut does not send; its metrics:

- `accuracy`: validation accuracy with the exit (`accuracy_drop`: the model's own minus it);
- `macs`: expected MACs per input (backbone to the exit and the head for all, the rest for 1 - p);
- `comm_bytes`: expected bytes per input sent across the cut ((1 - p) x the cut's activation);
- `latency_s`: expected seconds of a micro-batch (x's size) through both parts, part 1's time (receiving
  and computing) scaled by the share 1 - p of rows it gets: s0 + (1 - p) s1;
- `throughput`: inputs per second pipelined, micro-batch / max(s0, (1 - p) s1);
- `exit_share`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from decomp.build import build_graph
from decomp.errors import SearchError
from decomp.latency import LatencyModel
from decomp.partition.exits import ExitModel, ExitOutputs, exit_outputs, exit_plan, exit_report, train_exits
from decomp.partition.plan import PartitionPlan
from decomp.pruning.plan import PruningPlan
from search.objectives import CostEvaluator
from search.records import Candidate, Gene
from search.space import Genome, Space

__all__ = ["ExitEvaluator", "ExitSpace"]

CLOSED = 1.01  # a threshold no softmax probability reaches


class ExitSpace(Space):
    """See the module docstring. `points`: candidate exit ops; `low`: the lowest threshold searched."""

    def __init__(self, points: Sequence[str], low: float = 0.3) -> None:
        self.points = tuple(points)
        if not self.points:
            raise SearchError("give at least one op to put an exit after (e.g. the end of a block)")
        if not 0.0 <= low < 1.0:
            raise SearchError(f"the lowest threshold must be in [0, 1), got {low}")
        super().__init__([Gene("exit", 0, len(self.points) - 1, integer=True), Gene("threshold", low, CLOSED)])

    def point_of(self, genome: Sequence[float]) -> str:
        return self.points[int(genome[0])]

    def decode(self, genome: Genome) -> tuple[PruningPlan | None, PartitionPlan | None]:
        return None, None  # the plan is the exit model's (`exit_plan`), built by the evaluator

    def baselines(self) -> list[Genome]:
        """Every cut without an exit (the plain 2-part splits) and with the threshold in the middle."""
        middle = (self.genes[1].low + 1.0) / 2
        return [(k, CLOSED) for k in range(len(self.points))] + [(k, middle) for k in range(len(self.points))]


@dataclass
class _Point:
    exits: ExitModel
    outputs: ExitOutputs
    stage_s: tuple[float, float]  # per micro-batch: part 0 (to the exit, with the head), part 1 (the rest)
    micro_batch: int


class ExitEvaluator(CostEvaluator):
    """Evaluates `ExitSpace` candidates (see the module docstring). `train`/`validation`: loaders of (inputs,
    labels); `example_inputs`: one micro-batch. `evaluate` is `CostEvaluator`'s, on these metrics."""

    def __init__(
        self,
        model: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        space: ExitSpace,
        latency_model: LatencyModel,
        train,
        validation,
        head_epochs: int = 10,
        lr: float = 1e-2,
    ) -> None:
        self.network, self.inputs, self.space = model.eval(), tuple(example_inputs), space
        self.latency_model, self.train, self.validation = latency_model, train, validation
        self.head_epochs, self.lr = head_epochs, lr
        self._points: dict[str, _Point] = {}

    def point(self, at: str) -> _Point:
        """The exit at op `at`, trained, measured and priced (once)."""
        if at not in self._points:
            from decomp.timing import annotate_op_times, op_times

            exits = ExitModel(self.network, self.inputs, [at])
            train_exits(exits, self.train, epochs=self.head_epochs, lr=self.lr)  # ends in eval mode
            graph = build_graph(exits, self.inputs)
            annotate_op_times(graph, op_times(exits, self.inputs[0], repeats=3, threads=1))
            predicted = self.latency_model.predict(graph, exit_plan(graph, exits))
            s0, s1 = predicted.stage_s
            self._points[at] = _Point(exits, exit_outputs(exits, self.validation), (s0, s1), predicted.micro_batch)
        return self._points[at]

    def __call__(self, candidate: Candidate) -> dict[str, float]:
        point = self.point(self.space.point_of(candidate.genome))
        threshold = float(candidate.genome[1])
        report = exit_report(point.exits, [threshold], point.outputs)
        go_on = 1.0 - report.exit_share[0]
        s0, s1 = point.stage_s
        return {
            "accuracy": report.accuracy,
            "accuracy_drop": report.final_accuracy - report.accuracy,
            "exit_share": report.exit_share[0],
            "macs": report.macs,
            "comm_bytes": point.exits.cut_bytes[0] - report.bytes_not_sent[0],
            "latency_s": s0 + go_on * s1,
            "throughput": point.micro_batch / max(s0, go_on * s1),
        }
