"""Per-group and per-layer sensitivity: accuracy as each one alone is pruned harder (no retraining).

The table tells where pruning is cheap and where it hurts (Han et al. Fig. 6), and seeds per-layer
ratios for a search.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from decomp.pruning.apply import apply_plan
from decomp.pruning.groups import find_groups
from decomp.pruning.plan import GroupChoice, LayerSparsity, PruningPlan
from decomp.pruning.unstructured import prunable_layers

__all__ = ["sensitivity"]

RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9)


def sensitivity(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    score: Callable[[nn.Module], float],
    ratios: Sequence[float] = RATIOS,
    structured: bool = True,
    names: Sequence[str] | None = None,
    criterion: str = "l1",
) -> dict[str, list[tuple[float, float]]]:
    """{group or layer: [(ratio, score of the model with only it pruned at that ratio), ...]}.

    `structured`: prune coupling groups' channels (masked); else each layer's weights by magnitude.
    `score` is e.g. `lambda m: evaluate(m, test_loader)`.
    """
    if structured:
        names = list(names) if names is not None else [g.id for g in find_groups(model, example_inputs)]
    else:
        names = list(names) if names is not None else prunable_layers(model)
    table: dict[str, list[tuple[float, float]]] = {}
    for name in names:
        rows = []
        for ratio in ratios:
            if structured:
                plan = PruningPlan(groups=(GroupChoice(name, keep_ratio=1.0 - ratio),), criterion=criterion)
            else:
                plan = PruningPlan(layers=(LayerSparsity(name, sparsity=ratio),))
            rows.append((ratio, score(apply_plan(model, plan, example_inputs, "mask").module)))
        table[name] = rows
    return table
