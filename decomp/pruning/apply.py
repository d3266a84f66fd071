"""Apply a `PruningPlan`: physically (channels removed, a smaller module) or as masks (shapes kept).

Channel groups are pruned on an index-encoded copy (`decomp.pruning.indexed`), and every structured
prune is checked (`decomp.pruning.oracle`) before it is handed back.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from decomp.errors import InvalidPlanError
from decomp.pruning.fixups import rescale_attention
from decomp.pruning.groups import GroupIndex, find_groups
from decomp.pruning.importance import channel_importance
from decomp.pruning.indexed import copy_model, decode, prune_structure
from decomp.pruning.layers import weight_dims
from decomp.pruning.oracle import equivalence_problem, width_problems
from decomp.pruning.plan import GroupChoice, LayerSparsity, PruningPlan, parse_pattern

__all__ = ["PrunedModel", "apply_plan", "copy_model", "resolve_plan", "mask_in_place", "make_permanent", "MODES"]

MODES = ("physical", "mask")


@dataclass
class PrunedModel:
    """The result of applying a plan. `plan` has explicit kept indices, so it re-applies exactly; it
    lists only the groups that were pruned. `skipped`: groups of the asked plan left whole -> why."""

    module: nn.Module
    plan: PruningPlan
    mode: str
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter -> bool mask over the original
    skipped: dict[str, str] = field(default_factory=dict)

    def sparsity(self) -> float:
        """Share of the original parameters removed or masked to zero."""
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0


def resolve_plan(plan: PruningPlan, index: GroupIndex) -> PruningPlan:
    """Check the plan against the model's groups and turn keep ratios into explicit channel indices."""
    resolved = []
    for choice in plan.groups:
        if choice.group in index.skipped:
            raise InvalidPlanError(
                f"group {choice.group} cannot be pruned exactly: {index.skipped[choice.group]}; "
                "leave it out of the plan"
            )
        if choice.group not in index:
            known = ", ".join(list(index.groups)[:6])
            raise InvalidPlanError(f"the model has no coupling group {choice.group!r} (groups: {known}, ...)")
        group = index[choice.group]
        if choice.keep is not None:
            _check_keep(choice, group, _slice_cause(index, group))
            resolved.append(choice)
            continue
        # rank positions within one slice (a grouped conv's channel slice, a GroupNorm group, an attention
        # head; the whole group when 1)
        width = group.channels // group.slices
        count = choice.kept_count(width, max(1, math.lcm(plan.round_to, group.multiple) // group.slices))
        scores = channel_importance(index, choice.group, plan.criterion).view(group.slices, width).mean(0)
        positions = torch.topk(scores, count).indices.sort().values.tolist()
        keep = [s * width + p for s in range(group.slices) for p in positions]
        resolved.append(GroupChoice(choice.group, keep=tuple(keep)))
    return PruningPlan(groups=tuple(resolved), layers=plan.layers, criterion=plan.criterion, round_to=plan.round_to)


def _slice_cause(index: GroupIndex, group) -> str:
    """What cuts the group's channels into slices, for messages."""
    modules = dict(index.model.named_modules())
    kinds = {type(modules[path]) for path, _ in group.layers if path in modules}
    if nn.GroupNorm in kinds:
        return "a GroupNorm"
    if nn.MultiheadAttention in kinds:
        return "attention heads"
    return "a grouped convolution"


def _check_keep(choice: GroupChoice, group, cause: str) -> None:
    bad = [i for i in choice.keep if not 0 <= i < group.channels]
    if bad:
        raise InvalidPlanError(f"group {group.id} has {group.channels} channels; kept indices {bad[:5]} do not exist")
    if not choice.keep:
        raise InvalidPlanError(f"the plan removes every channel of group {group.id}; keep at least one")
    width = group.channels // group.slices
    per_slice = [
        sorted(i - s * width for i in choice.keep if s * width <= i < (s + 1) * width) for s in range(group.slices)
    ]
    if len(choice.keep) % group.multiple:
        raise InvalidPlanError(
            f"group {group.id} feeds attention with {group.multiple} heads; "
            f"keep a multiple of {group.multiple} channels"
        )
    if any(p != per_slice[0] for p in per_slice):
        raise InvalidPlanError(
            f"group {group.id} runs through {cause} with {group.slices} slices of {width} channels; "
            "keep the same positions in every slice"
        )


def _layer_mask(layer: nn.Module, item: LayerSparsity) -> torch.Tensor:
    if weight_dims(layer) == (1, 0):  # stored (in, out): work on (out, in) and transpose back
        return _weight_mask(layer.weight.detach().t(), item).t()
    return _weight_mask(layer.weight.detach(), item)


def _weight_mask(weight: torch.Tensor, item: LayerSparsity) -> torch.Tensor:
    """Mask over a weight of shape (out, in, ...): magnitude top-k, or N of every M consecutive inputs."""
    flat = weight.abs()
    if item.sparsity is not None:
        keep = flat.numel() - int(round(item.sparsity * flat.numel()))
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[torch.topk(flat.flatten(), keep).indices] = True
        return mask.view(weight.shape)
    n, m = parse_pattern(item.pattern)
    rows = flat.reshape(flat.shape[0], -1)
    if rows.shape[1] % m:
        raise InvalidPlanError(
            f"layer {item.layer} has {rows.shape[1]} inputs per output, "
            f"not a multiple of M={m} for pattern {item.pattern}"
        )
    blocks = rows.reshape(rows.shape[0], -1, m)
    mask = torch.zeros_like(blocks, dtype=torch.bool).scatter_(-1, blocks.topk(n, dim=-1).indices, True)
    return mask.view(weight.shape)


def _combine(structural: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Map a mask over a (possibly shrunk) weight back onto the original weight's shape."""
    if structural is None:
        return mask
    combined = structural.clone().flatten()
    combined[combined.nonzero().flatten()] = mask.flatten()  # survivors keep their row-major order
    return combined.view(structural.shape)


def _sparsify(physical: nn.Module, plan: PruningPlan, masks: dict[str, torch.Tensor]) -> None:
    """Zero the weights the plan's layer sparsities remove (on the structurally pruned model)."""
    layers = dict(physical.named_modules())
    for item in plan.layers:
        layer = layers.get(item.layer)
        if layer is None or not isinstance(getattr(layer, "weight", None), torch.Tensor):
            raise InvalidPlanError(f"the model has no layer {item.layer!r} with a weight to sparsify")
        mask = _layer_mask(layer, item)
        with torch.no_grad():
            layer.weight.mul_(mask)
        name = f"{item.layer}.weight"
        masks[name] = _combine(masks.get(name), mask)


def apply_plan(
    model: nn.Module,
    plan: PruningPlan,
    example_inputs: tuple[torch.Tensor, ...],
    mode: str = "physical",
    skip_failing: bool = False,
    index: GroupIndex | None = None,
) -> PrunedModel:
    """Apply `plan` to a copy of `model` (left untouched). `physical` removes channels; `mask` zeroes
    them through `torch.nn.utils.prune` masks (weights kept under `*_orig`, shapes unchanged).

    Every structured prune is checked (`decomp.pruning.oracle`): the kept widths must be the plan's, and
    a physical model must compute what the dense model with the removed channels zeroed computes. A
    failure raises `InvalidPlanError` naming the groups at fault and their layers, or, with
    `skip_failing`, leaves those groups whole and lists them in `PrunedModel.skipped`. `index`: the
    coupling groups of `model` where the caller has them (else they are found here).
    """
    if mode not in MODES:
        raise InvalidPlanError(f"unknown pruning mode {mode!r}; choose one of {', '.join(MODES)}")
    model.eval()
    inputs = tuple(example_inputs)
    if index is not None and index.model is not model:
        raise ValueError("apply_plan: `index` holds the coupling groups of another model; pass this model's")
    if plan.groups and index is None:
        index = find_groups(model, inputs)
    skipped: dict[str, str] = {}
    if skip_failing and index is not None:
        skipped = {c.group: index.skipped[c.group] for c in plan.groups if c.group in index.skipped}
        plan = replace(plan, groups=tuple(c for c in plan.groups if c.group not in skipped))
    resolved = resolve_plan(plan, index) if plan.groups else plan
    while True:
        result, masks, problems = _attempt(model, inputs, resolved, index, mode)
        if not problems:
            break
        failing = _culprits(
            list(resolved.groups), problems, lambda choices: _group_problems(model, inputs, choices, index, mode)
        )
        if not skip_failing or not failing or "" in failing:
            raise InvalidPlanError(_failure_message(failing or problems, index))
        skipped.update(failing)
        resolved = replace(resolved, groups=tuple(c for c in resolved.groups if c.group not in failing))
    if mode == "mask":
        result = copy_model(model).eval()
        layers = dict(result.named_modules())
        for name, mask in masks.items():
            owner, _, pname = name.rpartition(".")
            if not bool(mask.all()):
                torch_prune.custom_from_mask(layers[owner], pname, mask)
    return PrunedModel(result, resolved, mode, masks, skipped)


def _attempt(model: nn.Module, inputs: tuple[torch.Tensor, ...], plan: PruningPlan, index, mode: str):
    """(pruned model, masks, problems by group): the plan applied and checked."""
    if not plan.groups:
        physical, masks = copy_model(model), {}
        _sparsify(physical, plan, masks)
        return physical.eval(), masks, {}
    try:
        physical, norms = prune_structure(model, inputs, plan, index)
    except Exception as err:  # noqa: BLE001 - Torch-Pruning failing inside a group's pruning functions
        return None, {}, {"": f"Torch-Pruning fails while pruning ({type(err).__name__}: {err})"}
    twin = copy.deepcopy(physical) if mode == "physical" else None  # the structure, for re-drawn weights
    masks = decode(physical, model)
    problems = width_problems(model, physical, masks, plan, index)
    if not problems and mode == "physical":
        rescale_attention(physical, model)
        mismatch = equivalence_problem(model, physical, twin, masks, norms, inputs)
        problems = {"": mismatch} if mismatch else {}
    if problems:
        return None, masks, problems
    _sparsify(physical, plan, masks)  # zeroes the same weights in both: no effect on the check
    return physical.eval(), masks, {}


def _group_problems(model, inputs, choices: list[GroupChoice], index, mode: str) -> dict[str, str]:
    return _attempt(model, inputs, PruningPlan(groups=tuple(choices)), index, mode)[2]


def _culprits(choices: list[GroupChoice], problems: dict[str, str], check) -> dict[str, str]:
    """The groups at fault -> why, by bisection: a group fails on its own, or a set fails only together.
    `problems` are those of `choices` applied together (already known); `check(choices)` finds more."""
    if not problems:
        return {}
    named = {gid: why for gid, why in problems.items() if gid}
    if named or len(choices) == 1:
        return named or {choices[0].group: problems[""]}
    half = len(choices) // 2
    left, right = choices[:half], choices[half:]
    found = {**_culprits(left, check(left), check), **_culprits(right, check(right), check)}
    return found or {c.group: f"only together with the other groups listed: {problems['']}" for c in choices}


def _failure_message(failing: dict[str, str], index) -> str:
    lines = []
    for gid, why in failing.items():
        if not gid:
            lines.append(why)
            continue
        layers = [f"{path}:{side}" for path, side in index[gid].layers]
        shown = ", ".join(layers[:6]) + (f", ... ({len(layers)} layers)" if len(layers) > 6 else "")
        lines.append(f"group {gid} (layers {shown}): {why}")
    return (
        "structured pruning would not give the model the plan describes: "
        + "; ".join(lines)
        + ". Torch-Pruning does not follow this topology's channel mapping exactly; leave the group(s) out "
        "of the plan (decomp prune and apply_plan(..., skip_failing=True) leave them out by themselves)."
    )


def mask_in_place(model: nn.Module, plan: PruningPlan) -> None:
    """Add the plan's layer sparsities to `model`'s masks in place (for iterative prune -> retrain).

    Magnitudes are those the forward pass sees, so weights already masked count as pruned first.
    """
    if plan.groups:
        raise InvalidPlanError("mask_in_place takes layer sparsities only; apply channel groups with apply_plan")
    layers = dict(model.named_modules())
    for item in plan.layers:
        layer = layers.get(item.layer)
        if layer is None or not isinstance(getattr(layer, "weight", None), torch.Tensor):
            raise InvalidPlanError(f"the model has no layer {item.layer!r} with a weight to sparsify")
        torch_prune.custom_from_mask(layer, "weight", _layer_mask(layer, item))


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold torch.nn.utils.prune masks into plain parameters (zeros stay zeros); returns `model`."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)
    return model
