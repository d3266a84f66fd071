"""The checks every structured prune must pass: the plan is the model that was made, and the pruned
model computes what the dense model computes with the removed channels zeroed.

Widths: every producer layer of a group (a layer whose output channels are the group's channels) has
exactly the kept count the plan records, no layer is cut to nothing, and no layer loses weights that
no group in the plan lists.

Outputs: removing a channel and zeroing its weights in the dense model compute the same function
wherever the channel only ever meets weights (convolutions, linear layers, per-channel norms, adds,
concats, gates). That identity fails where a LayerNorm, GroupNorm or RMSNorm normalises over pruned
channels: the dense model's statistics count the zeroed channels, the pruned model's do not. The
reference therefore normalises over the kept channels only (read from the norm's weight mask), which
is what a correct prune computes there; a GroupNorm whose groups lose unequal numbers of channels is
regrouped by pruning and fails. A norm without weights gets temporary ones on the index-encoded copy
(`add_norm_probes`), so the channels it keeps are known all the same. Attention scales its scores by
the head width; physical pruning rescales the queries (`fixups.rescale_attention`) so the identity
holds for `nn.MultiheadAttention`.
"""

from __future__ import annotations

import math
import types

import torch
from torch import nn

from decomp.pruning.coverage import flat_tensors
from decomp.pruning.groups import GroupIndex
from decomp.pruning.heads import head_layout
from decomp.pruning.plan import PruningPlan

__all__ = [
    "TOLERANCE",
    "add_norm_probes",
    "masked_reference",
    "output_mismatch",
    "oracle_inputs",
    "read_norm_probes",
    "width_problems",
]

TOLERANCE = 1e-4  # largest |pruned - reference| relative to the reference output's largest magnitude
SAMPLES = 2  # the outputs are compared on this many samples of the example inputs


def oracle_inputs(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The first SAMPLES samples of the example inputs, where all share a batch dimension; else all."""
    sizes = {x.shape[0] for x in inputs if isinstance(x, torch.Tensor) and x.dim() > 0}
    if len(sizes) != 1 or sizes.pop() <= SAMPLES:
        return inputs
    return tuple(x[:SAMPLES] if isinstance(x, torch.Tensor) else x for x in inputs)


def width_problems(
    original: nn.Module, pruned: nn.Module, masks: dict[str, torch.Tensor], plan: PruningPlan, index: GroupIndex
) -> dict[str, str]:
    """Group (or '' for no particular group) -> what does not match between the plan and `pruned`."""
    problems: dict[str, str] = {}
    before, after = dict(original.named_modules()), dict(pruned.named_modules())
    for choice in plan.groups:
        group, kept = index[choice.group], len(choice.keep)
        if group.kind == "heads":
            heads = head_layout(after[group.id]).heads(after[group.id])
            if heads != kept:
                problems[group.id] = f"the plan keeps {kept} heads of {group.id}, the pruned model has {heads}"
            continue
        for path, side in group.layers:
            if side != "out" or path not in after:
                continue
            width = _out_width(index, before[path]), _out_width(index, after[path])
            if width[0] == group.channels and width[1] != kept:
                problems[group.id] = (
                    f"the plan keeps {kept} of {group.channels} channels, but {path} has {width[1]} output "
                    "channels after pruning"
                )
                break
    listed = {path for c in plan.groups for path, _ in index[c.group].layers}
    for name, param in pruned.named_parameters():
        owner = name.rpartition(".")[0]
        if param.numel() == 0:
            problems.setdefault(_owner_group(plan, index, owner, name), f"{name} lost every element")
        elif name in masks and not bool(masks[name].all()) and not _listed(owner, name, listed):
            problems.setdefault("", f"{name} lost weights, but no group in the plan lists {owner or name}")
    return problems


def _out_width(index: GroupIndex, module: nn.Module) -> int | None:
    pruner = index.dg.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
    try:
        return pruner.get_out_channels(module) if pruner is not None else None
    except (AttributeError, TypeError):  # a pruner that needs its dependency-graph node
        return None


def _listed(owner: str, name: str, listed: set[str]) -> bool:
    parts = owner.split(".") if owner else []
    return name in listed or any(".".join(parts[:k]) in listed for k in range(1, len(parts) + 1))


def _owner_group(plan: PruningPlan, index: GroupIndex, owner: str, name: str) -> str:
    for choice in plan.groups:
        if _listed(owner, name, {path for path, _ in index[choice.group].layers}):
            return choice.group
    return ""


def output_mismatch(pruned: nn.Module, reference: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str | None:
    """Why `pruned` does not compute what `reference` computes on `inputs` (None when it does)."""
    with torch.no_grad():
        want = flat_tensors(reference(*inputs))
        try:
            got = flat_tensors(pruned(*inputs))
        except Exception as err:  # noqa: BLE001 - whatever the model's own code raises on the new widths
            return f"the pruned model does not run ({type(err).__name__}: {err})"
    shapes = [tuple(t.shape) for t in want], [tuple(t.shape) for t in got]
    if shapes[0] != shapes[1]:
        return f"pruning changed the model's output shapes from {shapes[0]} to {shapes[1]}"
    for k, (a, b) in enumerate(zip(got, want, strict=True)):
        if not b.is_floating_point():
            if not torch.equal(a, b):
                return f"output {k} differs from the dense model with the removed channels zeroed"
            continue
        scale = float(b.abs().max()) if b.numel() else 0.0
        diff = float((a.double() - b.double()).abs().max()) if b.numel() else 0.0
        relative = diff / max(scale, torch.finfo(b.dtype).tiny)
        if not relative <= TOLERANCE:  # also NaN
            return (
                f"output {k} differs from the dense model with the removed channels zeroed by {relative:.2g} "
                f"relative (limit {TOLERANCE:g})"
            )
    return None


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


def masked_reference(
    copy: nn.Module, masks: dict[str, torch.Tensor], norms: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """Turn `copy` (of the dense model) into the reference: removed weights zeroed, and each norm that
    lost channels normalising over its kept channels only (from its weight mask, or from `norms` for
    norms without weights). Returns `copy`, in eval mode."""
    params = dict(copy.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device, params[name].dtype))
    for path, module in copy.named_modules():
        mask = masks.get(f"{path}.weight" if path else "weight", (norms or {}).get(path))
        cls = type(module)
        forward = _SUBSET_NORMS.get(f"{cls.__module__}.{cls.__qualname__}")
        if forward is not None and mask is not None and not bool(mask.all()):
            module._kept = mask.to(next((t.device for t in copy.parameters()), torch.device("cpu")))
            module.forward = types.MethodType(forward, module)
    return copy.eval()


def _subset_layer_norm(self, x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(-len(self.normalized_shape), 0))
    keep = self._kept.to(x.dtype)
    mean = (x * keep).sum(dims, keepdim=True) / keep.sum()
    var = ((x - mean) ** 2 * keep).sum(dims, keepdim=True) / keep.sum()
    y = (x - mean) / torch.sqrt(var + self.eps) * keep
    y = y * self.weight if self.weight is not None else y
    return y + self.bias if self.bias is not None else y


def _subset_rms_norm(self, x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(-len(self.normalized_shape), 0))
    keep = self._kept.to(x.dtype)
    eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
    return x / torch.sqrt((x**2 * keep).sum(dims, keepdim=True) / keep.sum() + eps) * self.weight


def _subset_group_norm(self, x: torch.Tensor) -> torch.Tensor:
    n, c, groups = x.shape[0], x.shape[1], self.num_groups
    blocks = x.reshape(n, groups, c // groups, -1)
    keep = self._kept.to(x.dtype).view(1, groups, c // groups, 1)
    count = keep.sum(2, keepdim=True) * blocks.shape[-1]
    mean = (blocks * keep).sum((2, 3), keepdim=True) / count
    var = ((blocks - mean) ** 2 * keep).sum((2, 3), keepdim=True) / count
    y = ((blocks - mean) / torch.sqrt(var + self.eps) * keep).view_as(x)
    shape = (1, c) + (1,) * (x.dim() - 2)
    return y * self.weight.view(shape) + self.bias.view(shape) if self.weight is not None else y


def _subset_layer_norm_2d(self, x: torch.Tensor) -> torch.Tensor:
    """torchvision's LayerNorm2d: a LayerNorm over the channels of an (N, C, H, W) map."""
    return _subset_layer_norm(self, x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# norms over channels, by class (subclasses that move the channel dimension need their own entry)
_SUBSET_NORMS = {
    "torch.nn.modules.normalization.LayerNorm": _subset_layer_norm,
    "torch.nn.modules.normalization.GroupNorm": _subset_group_norm,
    "torch.nn.modules.normalization.RMSNorm": _subset_rms_norm,
    "torchvision.models.convnext.LayerNorm2d": _subset_layer_norm_2d,
}
