"""Unstructured magnitude pruning plans and the size of sparse weights.

Han et al. 2015 prune each layer at threshold = quality x (std of the layer's weights); a global
plan uses one magnitude threshold for every layer. Sparse size follows Deep Compression's layout:
each nonzero stores its value and a relative index of `index_bits` bits, with a filler zero where a
gap between nonzeros does not fit in that many bits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from decomp.errors import InvalidPlanError
from decomp.pruning.layers import custom_root_types
from decomp.pruning.plan import LayerSparsity, PruningPlan

__all__ = ["SparseSize", "prunable_layers", "han_plan", "global_magnitude_plan", "sparse_size", "effective_weights"]

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd)


def prunable_layers(model: nn.Module) -> list[str]:
    """Linear and convolution layers (and custom ones such as transformers' Conv1D), by module path."""
    kinds = (*_WEIGHTED, *custom_root_types())
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


def effective_weights(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Each layer's weight as the forward pass sees it (masked weights included)."""
    modules = dict(model.named_modules())
    names = list(layers) if layers is not None else prunable_layers(model)
    missing = [
        n for n in names if n not in modules or not isinstance(getattr(modules[n], "weight", None), torch.Tensor)
    ]
    if missing:
        raise InvalidPlanError(f"the model has no weighted layer(s) {', '.join(missing)}")
    return {n: modules[n].weight.detach() for n in names}


def han_plan(model: nn.Module, quality: float | dict[str, float], layers: Iterable[str] | None = None) -> PruningPlan:
    """Per layer, remove the weights at or below quality x std(weights).

    The std is over the whole weight tensor as the forward pass sees it, pruned zeros included (as
    in Distiller's sensitivity pruner), so repeating a quality prunes a little more each round.
    """
    plan = []
    for name, w in effective_weights(model, layers).items():
        q = quality[name] if isinstance(quality, dict) else quality
        if q < 0:
            raise InvalidPlanError(f"quality parameter must be >= 0, got {q} for layer {name}")
        sparsity = float((w.abs() <= q * w.std()).float().mean())
        plan.append(LayerSparsity(name, sparsity=min(sparsity, 1.0 - 1.0 / w.numel())))
    return PruningPlan(layers=tuple(plan))


def global_magnitude_plan(model: nn.Module, sparsity: float, layers: Iterable[str] | None = None) -> PruningPlan:
    """One magnitude threshold across all layers, removing `sparsity` of their weights in total."""
    if not 0.0 <= sparsity < 1.0:
        raise InvalidPlanError(f"pruning ratio must be in [0, 1), got {sparsity}")
    weights = effective_weights(model, layers)
    pooled = torch.cat([w.abs().flatten() for w in weights.values()])
    cut = int(sparsity * pooled.numel())
    threshold = pooled.kthvalue(cut).values if cut > 0 else torch.tensor(-1.0)
    plan = []
    for name, w in weights.items():
        share = float((w.abs() <= threshold).float().mean())
        plan.append(LayerSparsity(name, sparsity=min(share, 1.0 - 1.0 / w.numel())))
    return PruningPlan(layers=tuple(plan))


@dataclass(frozen=True)
class SparseSize:
    """Dense vs sparse storage of some layers' weights."""

    weights: int
    nonzeros: int
    dense_bytes: int
    sparse_bytes: int

    @property
    def compression(self) -> float:
        return self.dense_bytes / self.sparse_bytes if self.sparse_bytes else float("inf")

    @property
    def pruned_ratio(self) -> float:
        """How many times fewer nonzero weights than weights."""
        return self.weights / self.nonzeros if self.nonzeros else float("inf")


def _entries(flat: torch.Tensor, index_bits: int) -> int:
    """Stored entries in the relative-index layout: nonzeros plus filler zeros for long gaps."""
    positions = flat.nonzero().flatten()
    if positions.numel() == 0:
        return 0
    gaps = torch.diff(positions, prepend=torch.tensor([-1]))
    span = 2**index_bits
    return int(((gaps - 1) // span).sum()) + positions.numel()


def sparse_size(
    model: nn.Module, layers: Iterable[str] | None = None, value_bits: int = 32, index_bits: int = 8
) -> SparseSize:
    weights = effective_weights(model, layers)
    total = nonzeros = entries = 0
    for w in weights.values():
        flat = w.flatten()
        total += flat.numel()
        nonzeros += int((flat != 0).sum())
        entries += _entries(flat, index_bits)
    return SparseSize(total, nonzeros, total * value_bits // 8, (entries * (value_bits + index_bits) + 7) // 8)
