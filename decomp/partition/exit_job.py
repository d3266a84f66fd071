"""The job behind `decomp exits`: put an early exit after an op of a trained classifier, train its head on
the frozen backbone, calibrate its threshold on a validation split for an accuracy budget, measure it on the
test split, and export the model split at the exit (part 0: the backbone to the exit and the head, part 1:
the rest), verified against the model with its exit.

The manifest's expected costs record the exit (`exit`: the op, the threshold, the reports on the validation
and test splits, and the data it was measured on), so `decomp eval` scores the export with the exit as the
runtime applies it (`cluster.exit_runner.ExitRunner`): an input confident at the exit is answered there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from decomp.build import build_graph
from decomp.data import load_data
from decomp.errors import DecompError
from decomp.graph import ModelGraph
from decomp.partition.exits import ExitModel, calibrate_exits, exit_plan, exit_report, train_exits
from decomp.partition.job import export_verified
from decomp.partition.plan import PartitionPlan
from decomp.partition.split import split_model
from decomp.specs import load_model
from decomp.training import check_fit

__all__ = ["ExitRequest", "ExitSummary", "run_exits"]


@dataclass(frozen=True)
class ExitRequest:
    """An exit after op `at` of `model` (a trained classifier: give `weights`), its head trained on `data`
    for `head_epochs`; threshold for at most `max_drop` accuracy lost (at `confidence`) on a `validation`
    share of the training split (carved with `seed`)."""

    model: str
    at: str
    data: str
    weights: str | None = None
    input_shapes: tuple[tuple[int, ...], ...] = field(default=())
    head_epochs: int = 10
    lr: float = 1e-2
    batch_size: int = 64
    max_drop: float = 0.005
    confidence: float = 0.9
    validation: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head_epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise DecompError("head epochs and batch size must be >= 1 and lr > 0")
        if not 0.0 <= self.max_drop < 1.0:
            raise DecompError(f"max drop is a share of accuracy in [0, 1), got {self.max_drop}; e.g. 0.005")


@dataclass(frozen=True)
class ExitSummary:
    """What `run_exits` did (`to_json()` for `--json`)."""

    request: ExitRequest
    out: Path
    accuracy: float  # the model's own on the test split
    threshold: float
    validation: dict[str, Any]  # ExitReport on the validation split
    test: dict[str, Any]  # ExitReport on the test split
    head_loss: tuple[float, float]  # first and last epoch
    max_abs_diff: float
    plan: PartitionPlan
    graph: ModelGraph

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("plan", "graph")}
        out["request"], out["out"] = asdict(self.request), str(self.out)
        out["parts"] = self.plan.parts
        return out


def run_exits(request: ExitRequest, out: str | Path, overwrite: bool = False) -> ExitSummary:
    """Train, calibrate, measure and export (see the module docstring)."""
    shapes = [tuple(s) for s in request.input_shapes] or None
    loaded = load_model(request.model, weights=request.weights, input_shapes=shapes)
    module, inputs = loaded.module.eval(), loaded.example_inputs
    data = load_data(request.data)
    check_fit(module, data, request.model, request.data)
    splits = data.with_validation(request.validation, seed=request.seed)
    order = torch.Generator().manual_seed(request.seed)  # the same head for the same request
    train = DataLoader(splits.train, batch_size=request.batch_size, shuffle=True, generator=order)
    validation = DataLoader(splits.validation, batch_size=256)
    test = DataLoader(splits.test, batch_size=256)
    exits = ExitModel(module, inputs, [request.at])
    losses = train_exits(exits, train, epochs=request.head_epochs, lr=request.lr, seed=request.seed)
    (threshold,) = calibrate_exits(exits, validation, request.max_drop, request.confidence)
    on_validation, on_test = exit_report(exits, [threshold], validation), exit_report(exits, [threshold], test)
    graph = build_graph(exits, inputs)
    plan = exit_plan(graph, exits)
    measured_on = {"data": request.data, "validation": request.validation, "seed": request.seed}
    costs = {
        "exit": {
            "at": request.at,
            "threshold": threshold,
            "max_drop": request.max_drop,
            "confidence": request.confidence,
            "validation": on_validation.to_json(),
            "test": on_test.to_json(),
            "measured_on": measured_on,
        }
    }
    folder, diff = export_verified(
        split_model(exits, inputs, plan),
        out,
        exits,
        source=str(loaded.spec or request.model),
        expected_costs=costs,
        overwrite=overwrite,
    )
    return ExitSummary(
        request=request,
        out=folder,
        accuracy=on_test.final_accuracy,
        threshold=threshold,
        validation=on_validation.to_json(),
        test=on_test.to_json(),
        head_loss=(losses[0], losses[-1]),
        max_abs_diff=diff,
        plan=plan,
        graph=graph,
    )
