"""One pruning job without a search: load a model (and data), prune by one method, optionally
fine-tune or iterate, and write weights (safetensors), the plan and a summary to a folder.

The folder is written to a temporary sibling and renamed, so it is never half-written. A pruned
model is rebuilt from its spec with `load_pruned`: build the model, apply the plan (explicit
channel indices), load the weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model
from torch import nn

from decomp.build import build_graph
from decomp.data import DataSplits, load_data
from decomp.errors import DecompError, InvalidPlanError
from decomp.files import staged_folder
from decomp.pruning.apply import PrunedModel, apply_plan, copy_model, make_permanent, mask_in_place
from decomp.pruning.groups import GroupIndex, find_groups
from decomp.pruning.han import han_prune, remove_dead_neurons
from decomp.pruning.importance import accumulate_gradients, plan_for_ratio
from decomp.pruning.layers import inputs_per_output
from decomp.pruning.plan import CRITERIA, LayerSparsity, PruningPlan, parse_pattern
from decomp.pruning.train import TrainConfig, evaluate, train
from decomp.pruning.unstructured import global_magnitude_plan, prunable_layers, sparse_size
from decomp.specs import LoadedModel, load_model

__all__ = ["METHODS", "ModelFigures", "PruneRequest", "PruneSummary", "load_pruned", "open_pruned", "run_prune"]

METHODS = (*CRITERIA, "magnitude", "han", "nm")
_NEEDS_DATA = ("taylor", "han")


@dataclass(frozen=True)
class PruneRequest:
    """What `decomp prune` was asked. `ratio`: share removed (channels for structured methods,
    weights for `magnitude`); `quality`: Han's threshold multiplier; `pattern`: N:M for `nm`."""

    model: str
    method: str = "l1"
    ratio: float | None = None
    quality: float | None = None
    pattern: str | None = None
    data: str | None = None
    finetune_epochs: int = 0
    iterations: int = 1
    scope: str = "local"
    round_to: int = 1
    lr: float = 1e-3
    batch_size: int = 64
    weights: str | None = None
    distill: float = 0.0  # weight of distillation from the unpruned model while fine-tuning
    keep: tuple[str, ...] = ()  # coupling groups or module paths left whole (structured methods)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DecompError(f"unknown pruning method {self.method!r}; choose one of {', '.join(METHODS)}")
        needed = {"han": "quality", "nm": "pattern"}.get(self.method, "ratio")
        if getattr(self, needed) is None:
            raise DecompError(f"method {self.method} needs --{needed}")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise InvalidPlanError(f"pruning ratio must be in [0, 1), got {self.ratio}")
        if self.method in _NEEDS_DATA and self.data is None:
            raise DecompError(f"method {self.method} needs training data: give --data (e.g. mnist)")
        if self.iterations < 1 or self.finetune_epochs < 0:
            raise DecompError("iterations must be >= 1 and finetune epochs >= 0")
        if self.distill and not (self.data and self.finetune_epochs):
            raise DecompError("distillation happens while fine-tuning: give --data and --finetune-epochs")
        if self.pattern is not None:
            parse_pattern(self.pattern)
        object.__setattr__(self, "keep", tuple(self.keep))
        if self.keep and self.method not in CRITERIA:
            raise DecompError(
                f"keep leaves coupling groups whole, which structured methods ({', '.join(CRITERIA)}) prune; "
                f"method {self.method} prunes weights: drop --keep or choose a structured method"
            )


@dataclass(frozen=True)
class ModelFigures:
    """A model measured before or after pruning: parameters and MACs of the traced model, the weights of
    its prunable layers (all, and nonzero) and their sparse storage bytes, and test accuracy (None
    without data)."""

    params: int
    macs: int
    nonzero_weights: int
    weights: int
    sparse_bytes: int
    accuracy: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelFigures:
        return cls(**data)


@dataclass(frozen=True)
class PruneSummary:
    """What a `decomp prune` job did (`summary.json` in its folder, `to_json()`): the request, the model
    before and after, and the files it wrote beside the summary. `skipped`: coupling groups left whole
    because they cannot be pruned exactly -> why; `unpruned`: layers with parameters that structured
    pruning left whole -> why (recurrent layers, output layers, layers of skipped groups...)."""

    request: PruneRequest
    before: ModelFigures
    after: ModelFigures
    files: tuple[str, ...] = ("weights.safetensors", "plan.json")
    skipped: dict[str, str] = field(default_factory=dict)
    unpruned: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "request": asdict(self.request),
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "files": list(self.files),
            "skipped": dict(self.skipped),
            "unpruned": dict(self.unpruned),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PruneSummary:
        return cls(
            PruneRequest(**data["request"]),
            ModelFigures.from_json(data["before"]),
            ModelFigures.from_json(data["after"]),
            tuple(data["files"]),
            dict(data.get("skipped", {})),  # summaries written before these were recorded have neither
            dict(data.get("unpruned", {})),
        )


@dataclass(frozen=True)
class _Outcome:
    """A pruned module, its plan, and what structured pruning left whole (group or layer -> why)."""

    module: nn.Module
    plan: PruningPlan
    skipped: dict[str, str] = field(default_factory=dict)
    unpruned: dict[str, str] = field(default_factory=dict)


def _measure(module: nn.Module, loaded: LoadedModel, data: DataSplits | None, loader) -> ModelFigures:
    graph = build_graph(module, loaded.example_inputs, tracer=loaded.tracer)
    size = sparse_size(module)
    return ModelFigures(
        params=graph.totals.params,
        macs=graph.totals.macs,
        nonzero_weights=size.nonzeros,
        weights=size.weights,
        sparse_bytes=size.sparse_bytes,
        accuracy=evaluate(module, loader) if data is not None else None,
    )


def _nm_plan(model: nn.Module, pattern: str) -> PruningPlan:
    _, m = parse_pattern(pattern)
    layers = dict(model.named_modules())
    fits = [n for n in prunable_layers(model) if inputs_per_output(layers[n]) % m == 0]
    return PruningPlan(layers=tuple(LayerSparsity(n, pattern=pattern) for n in fits))


def _left_whole(index: GroupIndex, pruned: PrunedModel) -> tuple[dict[str, str], dict[str, str]]:
    """Groups left out (by discovery or by the post-prune check) and the layers left whole, with why."""
    applied = {path for choice in pruned.plan.groups for path, _ in index[choice.group].layers}
    unpruned = dict(index.unpruned)
    for gid in pruned.skipped:
        for path, _ in index[gid].layers:
            if path not in applied:
                unpruned.setdefault(path, f"its group {gid} was left out (see the skipped groups)")
    return {**index.skipped, **pruned.skipped}, unpruned


def _prune(request: PruneRequest, loaded: LoadedModel, data: DataSplits | None, loaders) -> _Outcome:
    model, inputs = loaded.module, loaded.example_inputs
    retrain = TrainConfig(epochs=request.finetune_epochs, lr=request.lr, distill=request.distill)
    teacher = copy_model(model).eval() if request.distill else None
    if request.method in CRITERIA:
        if request.method == "taylor":
            accumulate_gradients(model, [next(iter(loaders[0]))])
        index = find_groups(model, inputs).keeping(request.keep)
        plan = plan_for_ratio(index, request.ratio, request.method, request.scope, request.round_to)
        pruned = apply_plan(model, plan, inputs, "physical", skip_failing=True, index=index)
        if data is not None and retrain.epochs:
            train(pruned.module, loaders[0], retrain, teacher=teacher)
        return _Outcome(pruned.module, pruned.plan, *_left_whole(index, pruned))
    if request.method == "han":
        steps = [request.quality * (k + 1) / request.iterations for k in range(request.iterations)]
        han_prune(model, loaders[0], loaders[1], steps, retrain, teacher=teacher)
        pruned = remove_dead_neurons(model, inputs)
        return _Outcome(pruned.module, pruned.plan, dict(pruned.skipped))
    for k in range(request.iterations):  # magnitude (a rising sparsity) or N:M, retrained with masks
        if request.method == "nm":
            plan = _nm_plan(model, request.pattern)
        else:
            plan = global_magnitude_plan(model, request.ratio * (k + 1) / request.iterations)
        mask_in_place(model, plan)
        if data is not None and retrain.epochs:
            train(model, loaders[0], retrain, teacher=teacher)
    return _Outcome(make_permanent(model), plan)


def run_prune(request: PruneRequest, out: str | Path) -> PruneSummary:
    """Run the job, write `weights.safetensors`, `plan.json` and `summary.json` to `out`; return the summary."""
    data = load_data(request.data) if request.data else None
    shapes = [(1, *data.input_shape)] if data is not None else None
    loaded = load_model(request.model, weights=request.weights, input_shapes=shapes)
    loaders = data.loaders(request.batch_size) if data is not None else (None, None)
    before = _measure(loaded.module, loaded, data, loaders[1])
    outcome = _prune(request, loaded, data, loaders)
    after = _measure(outcome.module, loaded, data, loaders[1])
    summary = PruneSummary(request, before, after, skipped=outcome.skipped, unpruned=outcome.unpruned)
    with staged_folder(out) as staging:
        save_model(outcome.module, str(staging / "weights.safetensors"))
        (staging / "plan.json").write_text(outcome.plan.dumps())
        (staging / "summary.json").write_text(json.dumps(summary.to_json(), indent=1))
    return summary


def open_pruned(folder: str | Path) -> tuple[LoadedModel, PruningPlan]:
    """Rebuild a pruned model from a `decomp prune` folder (the model spec comes from its summary):
    the loaded model with the pruned module in place of the dense one, and the folder's plan."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text())
        plan = PruningPlan.loads((folder / "plan.json").read_text())
        request = PruneSummary.from_json(summary).request
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise DecompError(
            f"{folder} is not a decomp prune folder ({err}); give the --out folder of decomp prune"
        ) from None
    shapes = [(1, *load_data(request.data).input_shape)] if request.data else None
    loaded = load_model(request.model, weights=request.weights, input_shapes=shapes)
    module = apply_plan(loaded.module, PruningPlan(groups=plan.groups), loaded.example_inputs).module
    load_safetensors(module, str(folder / "weights.safetensors"))
    return replace(loaded, module=module.eval()), plan


def load_pruned(folder: str | Path) -> nn.Module:
    """The pruned model of a `decomp prune` folder (see `open_pruned`)."""
    return open_pruned(folder)[0].module
