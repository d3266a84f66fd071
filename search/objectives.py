"""Objectives and constraints by name, and evaluations of the cheap ones without running the model.

`OBJECTIVES` names every quantity a study may optimise or bound, with its direction. Two are measured
by the evaluator that fine-tunes and tests the pruned model (`accuracy`, `agreement`); the rest are
computed in well under a millisecond or two from the costed graph by `decomp.latency.CostModel`, which
`CostEvaluator` turns into an `Evaluation` of a candidate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from decomp.errors import DecompError, SearchError
from decomp.latency.candidate import CostModel
from search.records import Candidate, Constraint, Evaluation, Objective

__all__ = ["OBJECTIVES", "CostEvaluator", "ObjectiveInfo", "objectives_for"]


@dataclass(frozen=True)
class ObjectiveInfo:
    """What an objective name means. `measured`: only an evaluator that runs the model reports it."""

    direction: str
    description: str
    measured: bool = False


OBJECTIVES: dict[str, ObjectiveInfo] = {
    "accuracy": ObjectiveInfo("maximize", "test accuracy of the fine-tuned pruned model", measured=True),
    "agreement": ObjectiveInfo("maximize", "share of inputs where the pruned model agrees with the original", True),
    "accuracy_proxy": ObjectiveInfo("maximize", "mean share of each group's channel importance the plan keeps"),
    "macs": ObjectiveInfo("minimize", "multiply-accumulates of one forward pass of the graph's batch"),
    "params": ObjectiveInfo("minimize", "parameters after channel removal (dense)"),
    "nonzero_params": ObjectiveInfo("minimize", "parameters left nonzero after unstructured and N:M sparsity"),
    "size_bytes": ObjectiveInfo("minimize", "bytes of the parameters after channel removal (dense)"),
    "latency_s": ObjectiveInfo("minimize", "seconds for one batch of micro-batches through the parts"),
    "throughput": ObjectiveInfo("maximize", "samples per second, pipelined over the parts"),
    "bottleneck_s": ObjectiveInfo("minimize", "seconds per micro-batch of the slowest part (compute + receive)"),
    "comm_bytes": ObjectiveInfo("minimize", "bytes sent to parts per forward pass (between parts and inputs)"),
    "peak_memory": ObjectiveInfo("minimize", "peak bytes on the busiest device (parameters + live activations)"),
}


def objectives_for(names: Sequence[str]) -> tuple[Objective, ...]:
    """`Objective` records for `names`, each with its registered direction."""
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise SearchError(f"unknown objective(s) {', '.join(map(repr, unknown))}; valid: {', '.join(OBJECTIVES)}")
    return tuple(Objective(n, OBJECTIVES[n].direction) for n in names)


class CostEvaluator:
    """Evaluations of candidates from their cheap metrics (`decomp.latency.CostModel`, built once per
    graph by the caller), for a study's objectives and constraints."""

    def __init__(self, model: CostModel) -> None:
        self.model = model

    def __call__(self, candidate: Candidate) -> dict[str, float]:
        """Every cheap metric of `candidate` by name (a missing plan means no pruning, or one part)."""
        return self.model(candidate.pruning, candidate.partition).metrics()

    def evaluate(
        self, candidate: Candidate, objectives: Sequence[Objective], constraints: Sequence[Constraint] = ()
    ) -> Evaluation:
        """An `Evaluation` with the objectives' and constraints' values (all metrics kept as `metrics`); a
        plan that does not fit the graph gives a failed evaluation naming the problem."""
        start = time.perf_counter()
        try:
            metrics = self(candidate)
        except DecompError as err:
            return Evaluation.failed(candidate.id, f"{type(err).__name__}: {err}", time.perf_counter() - start)
        names = [o.name for o in objectives] + [c.name for c in constraints]
        missing = [n for n in names if n not in metrics]
        if missing:
            measured = [n for n in missing if n in OBJECTIVES and OBJECTIVES[n].measured]
            hint = f" ({', '.join(measured)}: measured by an evaluator that runs the model)" if measured else ""
            raise SearchError(
                f"{type(self).__name__} cannot give {', '.join(missing)}{hint}; it gives {', '.join(sorted(metrics))}"
            )
        return Evaluation.of(
            candidate.id,
            [metrics[o.name] for o in objectives],
            [metrics[c.name] for c in constraints],
            metrics,
            wall_time=time.perf_counter() - start,
            names=names,
        )
