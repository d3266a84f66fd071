"""Torch-Pruning pruners for layer types it does not know: transformers' `Conv1D` (GPT-2 family).

`Conv1D` computes x @ W + b with W stored as (in, out), the transpose of `nn.Linear`.
"""

from __future__ import annotations

import torch_pruning as tp
from torch import nn

__all__ = ["custom_pruners", "custom_root_types", "inputs_per_output", "weight_dims"]


class Conv1DPruner(tp.pruner.BasePruningFunc):
    """Prunes transformers.pytorch_utils.Conv1D: output channels are weight columns, inputs are rows."""

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        keep = sorted(set(range(layer.weight.shape[1])) - set(idxs))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer: nn.Module, idxs) -> nn.Module:
        keep = sorted(set(range(layer.weight.shape[0])) - set(idxs))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        if hasattr(layer, "nx"):
            layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[1]

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.weight.shape[0]


def _conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return None
    return Conv1D


def custom_root_types() -> tuple[type, ...]:
    conv1d = _conv1d_class()
    return (conv1d,) if conv1d else ()


def custom_pruners(model: nn.Module) -> dict[type, tp.pruner.BasePruningFunc]:
    """The extra pruners a model needs, keyed by layer class."""
    conv1d = _conv1d_class()
    if conv1d and any(isinstance(m, conv1d) for m in model.modules()):
        return {conv1d: Conv1DPruner()}
    return {}


def weight_dims(layer: nn.Module) -> tuple[int, int] | None:
    """(output dim, input dim) of a custom layer's weight, for magnitude importance; None if not custom."""
    conv1d = _conv1d_class()
    if conv1d and isinstance(layer, conv1d):
        return 1, 0
    return None


def inputs_per_output(layer: nn.Module) -> int:
    """Weights feeding one output channel (in_features, or in_channels/groups x kernel size)."""
    out_dim = (weight_dims(layer) or (0, 1))[0]
    return layer.weight.numel() // layer.weight.shape[out_dim]
