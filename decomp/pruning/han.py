"""Han et al. 2015, "Learning both Weights and Connections": train, prune by magnitude, retrain, iterate.

Per round: mask the weights below quality x std of each layer, scale dropout down as
D_r = D_o * sqrt(C_r / C_o) (C: live connections of the layer the dropout feeds), retrain the
survivors from their values. After the last round, `remove_dead_neurons` physically drops neurons
left with no input or no output connections.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from decomp.pruning.apply import PrunedModel, apply_plan, copy_model, make_permanent, mask_in_place
from decomp.pruning.groups import find_groups, pruned_side
from decomp.pruning.layers import weight_dims
from decomp.pruning.plan import GroupChoice, PruningPlan
from decomp.pruning.train import TrainConfig, evaluate, train
from decomp.pruning.unstructured import effective_weights, han_plan, prunable_layers

__all__ = ["DropoutBaseline", "HanRound", "dropout_baseline", "adjust_dropout", "han_prune", "remove_dead_neurons"]

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)


@dataclass(frozen=True)
class DropoutBaseline:
    """Each dropout's original rate and the original live connections of the layer it feeds."""

    rates: dict[str, float]
    feeds: dict[str, str]
    connections: dict[str, int]


def dropout_baseline(model: nn.Module) -> DropoutBaseline:
    """Pair every nn.Dropout with the next conv/linear layer in definition order (the one it feeds)."""
    rates, feeds, pending = {}, {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            rates[name] = m.p
            pending.append(name)
        elif isinstance(m, _WEIGHTED):
            feeds.update((d, name) for d in pending)
            pending = []
    live = {layer: int((w != 0).sum()) for layer, w in effective_weights(model, set(feeds.values())).items()}
    return DropoutBaseline({d: rates[d] for d in feeds}, feeds, live)


def adjust_dropout(model: nn.Module, baseline: DropoutBaseline) -> dict[str, float]:
    """Set each dropout to D_o * sqrt(C_r / C_o); returns the new rates."""
    modules = dict(model.named_modules())
    current = effective_weights(model, set(baseline.feeds.values()))
    rates = {}
    for name, layer in baseline.feeds.items():
        ratio = int((current[layer] != 0).sum()) / baseline.connections[layer]
        modules[name].p = rates[name] = baseline.rates[name] * math.sqrt(ratio)
    return rates


@dataclass(frozen=True)
class HanRound:
    """One prune -> retrain round."""

    quality: float | dict[str, float]
    accuracy: float
    nonzeros: int
    weights: int
    density: dict[str, float]  # live share per layer
    dropout: dict[str, float]


def han_prune(
    model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    qualities: Sequence[float | dict[str, float]],
    retrain: TrainConfig | None = None,
    layers: Sequence[str] | None = None,
    teacher: nn.Module | None = None,
) -> list[HanRound]:
    """Iterate prune (threshold quality x std) -> adjust dropout -> retrain, in place with masks.

    Each entry of `qualities` is one round: one quality for every layer, or a dict layer -> quality
    (e.g. a lower one for the sensitive first and last layers, as Han et al. do).
    """
    names = list(layers) if layers is not None else prunable_layers(model)
    baseline = dropout_baseline(model)
    rounds = []
    for quality in qualities:
        mask_in_place(model, han_plan(model, quality, names))
        rates = adjust_dropout(model, baseline)
        train(model, train_loader, retrain or TrainConfig(), teacher=teacher)
        weights = effective_weights(model, names)
        rounds.append(
            HanRound(
                quality=quality,
                accuracy=evaluate(model, test_loader),
                nonzeros=sum(int((w != 0).sum()) for w in weights.values()),
                weights=sum(w.numel() for w in weights.values()),
                density={n: float((w != 0).float().mean()) for n, w in weights.items()},
                dropout=rates,
            )
        )
    return rounds


def _slices(module: nn.Module, side: str, idxs: list[int]) -> list[torch.Tensor] | None:
    """The parameter slices of channel `idxs` on one side of a layer; None for layers we cannot read."""
    dims = weight_dims(module) or ((0, 1) if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) else None)
    if dims is None or isinstance(module, nn.modules.conv._ConvTransposeNd):
        return None
    index = torch.tensor(idxs)
    if side == "in":
        return [module.weight.detach().index_select(dims[1], index)]
    bias = [module.bias.detach().index_select(0, index)] if module.bias is not None else []
    return [module.weight.detach().index_select(dims[0], index), *bias]


def _is_dead(items, side: str) -> bool:
    found = False
    for module, item_side, idxs in items:
        if item_side != side:
            continue
        parts = _slices(module, side, idxs) if isinstance(module, nn.Module) else None
        if parts is None:
            if side == "out" and any(True for _ in module.parameters(recurse=False)):
                return False  # e.g. a BatchNorm whose shift keeps the channel alive
            continue
        found = True
        if any(bool(p.any()) for p in parts):
            return False
    return found


def remove_dead_neurons(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> PrunedModel:
    """Physically remove channels with no live output connections, or no live inputs and no bias.

    Works on a copy with its masks made permanent; `model` is left as it was. Both removals leave the
    model's outputs unchanged. Groups that cannot be pruned exactly stay whole (`PrunedModel.skipped`).
    """
    model = make_permanent(copy_model(model))
    index = find_groups(model, example_inputs)
    choices = []
    for group in index:
        if group.kind != "channels":
            continue
        alive = []
        for c in range(group.channels):
            items = [
                (item.dep.target.module, pruned_side(item.dep.handler), [int(getattr(i, "idx", i)) for i in item.idxs])
                for item in index.tp_group(group.id, [c])
            ]
            if not (_is_dead(items, "in") or _is_dead(items, "out")):
                alive.append(c)
        if len(alive) < group.channels:
            choices.append(GroupChoice(group.id, keep=tuple(alive or [0])))
    plan = PruningPlan(groups=tuple(choices))
    return apply_plan(model, plan, example_inputs, "physical", skip_failing=True, index=index)
