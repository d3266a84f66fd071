"""The job behind `decomp decompose`: cut a chain of a model's layers into G independent branches (group
decomposition, `decomp.partition.branches`), fine-tune with the weights between groups held at zero, and
export the branches as parts (branch g on part g), verified against the decomposed model.

With data, the summary has the test accuracy of the model as given, with the weights between groups
zeroed, and after fine-tuning; without, nothing is fine-tuned and the export computes the masked model
(say so: its outputs differ from the given model's). The bytes the export sends between branches inside
the chain are read back from its manifest: a decomposition that sends any is an error, never an export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from decomp.build import build_graph
from decomp.data import load_data
from decomp.errors import DecompError, InvalidPlanError
from decomp.graph import ModelGraph
from decomp.partition.branches import apply_masks, group_masks, group_split
from decomp.partition.job import WIDTH_TOLERANCE, export_verified
from decomp.partition.manifest import read_manifest
from decomp.partition.metrics import partition_metrics
from decomp.partition.plan import PartitionPlan
from decomp.partition.split import split_model
from decomp.partition.width import split_width, width_plan
from decomp.pruning.apply import make_permanent
from decomp.pruning.train import TrainConfig, evaluate, train
from decomp.specs import load_model
from decomp.training import check_fit

__all__ = ["DecomposeRequest", "DecomposeSummary", "run_decompose"]


@dataclass(frozen=True)
class DecomposeRequest:
    """What to decompose: `chain` (module paths: the first layer, the layers run per group, the last),
    into `groups` branches; `data` to fine-tune on (`finetune_epochs`, `lr`, `batch_size`) and score."""

    model: str
    chain: tuple[str, ...]
    groups: int
    weights: str | None = None
    input_shapes: tuple[tuple[int, ...], ...] = field(default=())
    data: str | None = None
    finetune_epochs: int = 0
    lr: float = 1e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.finetune_epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise DecompError("finetune epochs must be >= 0, lr > 0 and batch size >= 1")
        if self.finetune_epochs and self.data is None:
            raise DecompError("fine-tuning needs --data (e.g. digits, mnist, python:pkg.module:factory)")


@dataclass(frozen=True)
class DecomposeSummary:
    """What `run_decompose` did (`to_json()` for `--json`)."""

    request: DecomposeRequest
    out: Path
    split: dict[str, Any]  # the WidthSplit, with its channel groups
    parts: int
    accuracy: dict[str, float] | None  # given, masked, fine-tuned (with data)
    params: tuple[int, int]  # before, after
    macs: tuple[float, float]  # per forward pass of the example batch, before and after
    bytes_to_parts: int  # per forward pass of the example batch
    bytes_between_branches: int  # inside the chain: always 0
    max_abs_diff: float
    plan: PartitionPlan | None = field(default=None, compare=False, repr=False)
    graph: ModelGraph | None = field(default=None, compare=False, repr=False)  # the decomposed model's

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("plan", "graph")}
        out["request"], out["out"] = asdict(self.request), str(self.out)
        return out


def run_decompose(request: DecomposeRequest, out: str | Path, overwrite: bool = False) -> DecomposeSummary:
    """Decompose, fine-tune where asked, export to `out` and verify (see the module docstring)."""
    shapes = [tuple(s) for s in request.input_shapes] or None
    loaded = load_model(request.model, weights=request.weights, input_shapes=shapes)
    if loaded.tracer != "fx":
        raise InvalidPlanError(
            f"group decomposition rewrites torch.fx graphs; {request.model} traces with {loaded.tracer}"
        )
    module, inputs = loaded.module.eval(), loaded.example_inputs
    before_params = sum(p.numel() for p in module.parameters())
    before_macs = build_graph(module, inputs).totals.macs
    split = group_split(module, request.chain, request.groups)
    masks = group_masks(module, split)
    accuracy = None
    if request.data is not None:
        data = load_data(request.data)
        check_fit(module, data, request.model, request.data)
        train_loader, test_loader = data.loaders(request.batch_size)
        accuracy = {"given": evaluate(module, test_loader)}
        apply_masks(module, masks)
        accuracy["masked"] = evaluate(module, test_loader)
        if request.finetune_epochs:
            config = TrainConfig(epochs=request.finetune_epochs, lr=request.lr, schedule="cosine")
            train(module, train_loader, config)
            accuracy["fine-tuned"] = evaluate(module, test_loader)
    else:
        apply_masks(module, masks)
    make_permanent(module)
    decomposed = split_width(module, inputs, [split])
    graph = build_graph(decomposed.module, inputs)
    plan = width_plan(graph, decomposed)
    metrics = partition_metrics(graph, plan)
    costs = {"group_decomposition": split.to_json(), "accuracy": accuracy, "metrics": metrics.to_json()}
    folder, diff = export_verified(
        split_model(decomposed.module, inputs, plan),
        out,
        module,
        WIDTH_TOLERANCE,
        source=str(loaded.spec or request.model),
        expected_costs=costs,
        overwrite=overwrite,
    )
    edges = read_manifest(folder).edges
    inner = {n for way in decomposed.slices[0] for n in way[:-1]}  # each branch but its partial sum
    between = sum(e.bytes for e in edges if e.source is not None and e.source != e.target and e.tensor in inner)
    if between:
        raise InvalidPlanError(f"the branches in {folder} exchange {between} bytes inside the chain; report the model")
    return DecomposeSummary(
        request=request,
        out=folder,
        split=split.to_json(),
        parts=plan.parts,
        accuracy=accuracy,
        params=(before_params, sum(p.numel() for p in decomposed.module.parameters())),
        macs=(before_macs, graph.totals.macs),
        bytes_to_parts=sum(e.bytes for e in edges if e.target is not None),
        bytes_between_branches=between,
        max_abs_diff=diff,
        plan=plan,
        graph=graph,
    )
