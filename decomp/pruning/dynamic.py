"""Dynamic (recoverable) pruning, after Guo et al. 2016 "Dynamic Network Surgery".

Each chosen layer's weight is parametrised as W * M in the forward pass, but the gradient reaches
every entry of W (straight-through), so pruned weights keep learning. Every `every` steps the mask
is chosen again with hysteresis around the magnitude threshold t of the target sparsity: entries
below t * (1 - margin) are pruned, entries above t * (1 + margin) come back, the rest keep their
state. `finish()` folds the masks into plain weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from decomp.errors import InvalidPlanError
from decomp.pruning.train import Callback
from decomp.pruning.unstructured import effective_weights

__all__ = ["DynamicMasks"]


class _StraightThroughMask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        # value W * M, gradient 1 for every entry of W
        return weight * self.mask + (weight - weight.detach()) * (1 - self.mask)


class DynamicMasks(Callback):
    """Recoverable magnitude masks on `layers` at `sparsity`, re-chosen every `every` steps."""

    def __init__(self, model: nn.Module, layers: Sequence[str], sparsity: float, every: int = 10, margin: float = 0.1):
        if not 0.0 <= sparsity < 1.0:
            raise InvalidPlanError(f"pruning ratio must be in [0, 1), got {sparsity}")
        if every < 1 or not 0.0 <= margin < 1.0:
            raise InvalidPlanError(f"every must be >= 1 and margin in [0, 1); got {every}, {margin}")
        effective_weights(model, layers)  # names checked here
        self.model, self.sparsity, self.every, self.margin = model, sparsity, every, margin
        self.modules = {name: model.get_submodule(name) for name in layers}
        self.recovered = 0  # entries that came back over the run
        for module in self.modules.values():
            mask = self._threshold_mask(module.weight.detach())
            parametrize.register_parametrization(module, "weight", _StraightThroughMask(mask))

    def _threshold(self, weight: torch.Tensor) -> torch.Tensor:
        cut = int(self.sparsity * weight.numel())
        return weight.abs().flatten().kthvalue(cut).values if cut else torch.tensor(-1.0)

    def _threshold_mask(self, weight: torch.Tensor) -> torch.Tensor:
        return (weight.abs() > self._threshold(weight)).float()

    def masks(self) -> dict[str, torch.Tensor]:
        return {name: m.parametrizations.weight[0].mask.bool() for name, m in self.modules.items()}

    def on_step(self, step: int) -> None:
        if step % self.every:
            return
        with torch.no_grad():
            for module in self.modules.values():
                dense = module.parametrizations.weight.original
                holder = module.parametrizations.weight[0]
                t = self._threshold(dense)
                low, high = dense.abs() < t * (1 - self.margin), dense.abs() > t * (1 + self.margin)
                self.recovered += int((high & (holder.mask == 0)).sum())
                holder.mask[low] = 0.0
                holder.mask[high] = 1.0

    def finish(self) -> dict[str, torch.Tensor]:
        """Fold masks into plain weights (pruned entries become zeros); returns the final masks."""
        masks = self.masks()
        for module in self.modules.values():
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        return masks
