"""Channel importance for structured pruning (Torch-Pruning's criteria) and plans built from a ratio."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn

from decomp.errors import InvalidPlanError
from decomp.pruning.groups import GroupIndex
from decomp.pruning.heads import head_importance
from decomp.pruning.layers import weight_dims
from decomp.pruning.plan import CRITERIA, GroupChoice, PruningPlan

__all__ = ["channel_importance", "plan_for_ratio", "accumulate_gradients"]

_MAKERS: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "fpgm": lambda: tp.importance.FPGMImportance(),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),  # network slimming: |gamma| of the BatchNorms
    "taylor": lambda: tp.importance.GroupTaylorImportance(),  # first order: |w * dL/dw|
}


def accumulate_gradients(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable = nn.functional.cross_entropy,
) -> None:
    """Fill `.grad` of the model's parameters from a few labelled batches (what the Taylor criterion reads)."""
    model.zero_grad()
    for inputs, targets in batches:
        loss_fn(model(inputs), targets).backward()


def channel_importance(index: GroupIndex, group_id: str, criterion: str = "l1") -> torch.Tensor:
    """One score per channel of the group (higher = more important)."""
    if criterion not in CRITERIA:
        raise InvalidPlanError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if index[group_id].kind == "heads":
        if criterion not in ("l1", "l2"):
            raise InvalidPlanError(f"attention head group {group_id} is ranked by l1 or l2, not {criterion}")
        p = 1 if criterion == "l1" else 2
        return sum(head_importance(index.model.get_submodule(path), p=p) for path in index[group_id].head_modules)
    group = index.tp_group(group_id)
    if criterion == "taylor" and any(
        p.grad is None for item in group for p in getattr(item.dep.target.module, "parameters", lambda: [])()
    ):
        raise InvalidPlanError(
            "the taylor criterion needs gradients: call decomp.pruning.accumulate_gradients(model, batches) first"
        )
    with torch.no_grad():
        scores = _MAKERS[criterion]()(group)
        if criterion in ("l1", "l2"):
            scores = _add_custom_layers(group, scores, p=1 if criterion == "l1" else 2)
    if scores is None:
        raise InvalidPlanError(
            f"criterion {criterion} cannot rank group {group_id} (e.g. bn_scale needs a BatchNorm in the group); "
            "choose l1, l2 or fpgm"
        )
    return scores.detach().float()


def _add_custom_layers(group, scores: torch.Tensor | None, p: int) -> torch.Tensor | None:
    """Magnitude of the group's layers Torch-Pruning's criteria skip (e.g. transformers' Conv1D)."""
    for item in group:
        layer = item.dep.target.module
        dims = weight_dims(layer)
        if dims is None:
            continue
        dim = dims[0] if item.dep.handler.__name__.endswith("out_channels") else dims[1]
        norms = layer.weight.detach().abs().pow(p).sum(dim=1 - dim)[item.idxs]
        scores = norms if scores is None else scores + norms
    return scores


def plan_for_ratio(
    index: GroupIndex, ratio: float, criterion: str = "l1", scope: str = "local", round_to: int = 1
) -> PruningPlan:
    """Remove `ratio` of the channels: the same share in every group (`local`) or the least important
    channels across all groups, scores normalised per group (`global`)."""
    if not 0.0 <= ratio < 1.0:
        raise InvalidPlanError(f"pruning ratio must be in [0, 1), got {ratio}")
    if scope == "local":
        choices = [GroupChoice(g.id, keep_ratio=1.0 - ratio) for g in index]
        return PruningPlan(groups=tuple(choices), criterion=criterion, round_to=round_to)
    if scope != "global":
        raise InvalidPlanError(f"unknown ranking scope {scope!r}; choose local or global")
    scores = {g.id: channel_importance(index, g.id, criterion) for g in index}
    normalised = {gid: s / (s.mean() + 1e-12) for gid, s in scores.items()}
    pooled = torch.cat(list(normalised.values()))
    cut = int(ratio * pooled.numel())
    threshold = pooled.sort().values[cut - 1] if cut > 0 else -float("inf")
    choices = []
    for gid, s in normalised.items():
        wanted = int((s > threshold).sum())
        count = min(len(s), max(round_to, round_to * round(wanted / round_to)))
        keep = torch.topk(s, count).indices.tolist()
        choices.append(GroupChoice(gid, keep=tuple(keep)))
    return PruningPlan(groups=tuple(choices), criterion=criterion, round_to=round_to)
