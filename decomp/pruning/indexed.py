"""Structured pruning on an index-encoded copy of the model.

Torch-Pruning runs on a float64 copy of the model whose every parameter and buffer element holds its
own flat index. After pruning, each surviving tensor lists exactly which original elements it kept:
`decode` fills that structure with the values of the original (or of any model of the same
architecture, as the oracle does with re-drawn weights), and the mask of every parameter follows for
free, for any layer type Torch-Pruning can prune.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from decomp.errors import InvalidPlanError
from decomp.pruning.fixups import sync_attributes
from decomp.pruning.groups import GroupIndex
from decomp.pruning.heads import prune_heads
from decomp.pruning.plan import PruningPlan

__all__ = ["add_norm_probes", "copy_model", "decode", "prune_structure", "read_norm_probes"]


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of `model`, also when it carries torch.nn.utils.prune masks after a forward pass with
    gradients (its masked weights are then non-leaf tensors, which `copy.deepcopy` refuses)."""
    computed = []
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, torch_prune.BasePruningMethod):
                tensor = getattr(module, hook._tensor_name)
                if not tensor.is_leaf:
                    computed.append((module, hook._tensor_name, tensor))
                    setattr(module, hook._tensor_name, tensor.detach())
    try:
        return copy.deepcopy(model)
    finally:
        for module, name, tensor in computed:
            setattr(module, name, tensor)


def _encode(model: nn.Module) -> nn.Module:
    """A float64 copy of `model` whose every floating parameter and buffer element holds its flat index."""
    encoded = copy_model(model).double()
    with torch.no_grad():
        for tensor in [*encoded.parameters(), *encoded.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(torch.arange(tensor.numel(), dtype=torch.float64).view_as(tensor))
    return encoded


def decode(structure: nn.Module, original: nn.Module) -> dict[str, torch.Tensor]:
    """Fill a pruned structure (in place) with the values of `original`, a model of the architecture it
    was pruned from; return each parameter's keep mask over `original`'s."""
    masks = {}
    sources = dict(original.named_parameters()) | dict(original.named_buffers())
    with torch.no_grad():
        named = list(structure.named_parameters()) + list(structure.named_buffers())
        for name, tensor in named:
            source = sources[name]
            if not source.is_floating_point():
                continue
            kept = tensor.detach().long().flatten()
            tensor.data = source.detach().flatten()[kept].view(tensor.shape).clone()
            if isinstance(tensor, nn.Parameter):
                mask = torch.zeros(source.numel(), dtype=torch.bool)
                mask[kept] = True
                masks[name] = mask.view(source.shape)
    return masks


def prune_structure(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], plan: PruningPlan, groups: GroupIndex
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The plan's channel groups (of `groups`, the index of `model`) pruned on an index-encoded copy of
    `model` (the structure, for `decode`), and the kept channels of norms without weights (masks by
    module path)."""
    encoded = _encode(model)
    probes = add_norm_probes(encoded)
    doubled = tuple(x.double() if x.is_floating_point() else x for x in inputs)
    index = groups.on_copy(encoded, doubled)
    for choice in plan.groups:
        if choice.group not in index:
            raise InvalidPlanError(f"the model has no coupling group {choice.group!r}")
        removed = sorted(set(range(index[choice.group].channels)) - set(choice.keep))
        if removed and index[choice.group].kind == "heads":
            for path in index[choice.group].head_modules:
                prune_heads(encoded.get_submodule(path), list(choice.keep))
        elif removed:
            index.tp_group(choice.group, removed).prune()
    sync_attributes(encoded)
    return encoded, read_norm_probes(encoded, model, probes)


def add_norm_probes(encoded: nn.Module) -> list[str]:
    """Give each LayerNorm and GroupNorm without weights temporary weights holding their channel
    indices (on the index-encoded copy Torch-Pruning prunes), so the channels it keeps can be read."""
    probes = []
    device = next((t.device for t in encoded.parameters()), torch.device("cpu"))
    for path, module in encoded.named_modules():
        if isinstance(module, nn.LayerNorm) and module.weight is None:
            shape = module.normalized_shape
            module.weight = nn.Parameter(torch.arange(math.prod(shape), dtype=torch.float64, device=device).view(shape))
            module.elementwise_affine = True
        elif isinstance(module, nn.GroupNorm) and module.weight is None:
            module.weight = nn.Parameter(torch.arange(module.num_channels, dtype=torch.float64, device=device))
            module.bias = nn.Parameter(torch.zeros(module.num_channels, dtype=torch.float64, device=device))
            module.affine = True
        else:
            continue
        probes.append(path)
    return probes


def read_norm_probes(encoded: nn.Module, original: nn.Module, probes: list[str]) -> dict[str, torch.Tensor]:
    """Each probed norm's kept channels as a mask over the original's; the probes are removed again."""
    kept = {}
    for path in probes:
        module, dense = encoded.get_submodule(path), original.get_submodule(path)
        size = math.prod(dense.normalized_shape) if isinstance(dense, nn.LayerNorm) else dense.num_channels
        mask = torch.zeros(size, dtype=torch.bool)
        mask[module.weight.detach().long().flatten().cpu()] = True
        kept[path] = mask.view(dense.normalized_shape) if isinstance(dense, nn.LayerNorm) else mask
        module.weight, module.bias = None, None
        module.elementwise_affine = module.affine = False
    return kept
