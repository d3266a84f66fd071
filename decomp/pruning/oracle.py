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
from decomp.pruning.fixups import rescale_attention
from decomp.pruning.groups import GroupIndex
from decomp.pruning.heads import head_layout
from decomp.pruning.indexed import copy_model, decode
from decomp.pruning.plan import PruningPlan

__all__ = [
    "TOLERANCE",
    "equivalence_problem",
    "masked_reference",
    "output_mismatch",
    "oracle_inputs",
    "redrawn",
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
            for path in group.head_modules:
                heads = head_layout(after[path]).heads(after[path])
                if heads != kept:
                    problems[group.id] = f"the plan keeps {kept} heads of {group.id}, the pruned {path} has {heads}"
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


def equivalence_problem(
    model: nn.Module,
    physical: nn.Module,
    structure: nn.Module,
    masks: dict[str, torch.Tensor],
    norms: dict[str, torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
) -> str | None:
    """Why the physical model does not compute the dense model with the removed channels zeroed: with
    the model's own weights, then with re-drawn ones on an undecoded copy of the pruned `structure`
    (the identity holds for any weights when the pruning is right; the model's own can hide a wrong
    prune: small initial weights leave attention uniform, a zero head makes every output 0)."""
    sample = oracle_inputs(inputs)
    mismatch = output_mismatch(physical.eval(), masked_reference(copy_model(model), masks, norms), sample)
    if mismatch is not None:
        return mismatch
    dense = redrawn(copy_model(model))
    decode(structure, dense)
    rescale_attention(structure, dense)
    mismatch = output_mismatch(structure.eval(), masked_reference(dense, masks, norms), sample, finite_only=True)
    return None if mismatch is None else f"{mismatch}, with re-drawn weights"


def redrawn(model: nn.Module, seed: int = 0) -> nn.Module:
    """`model` (changed in place) with every parameter re-drawn, seeded, at scales that keep activations
    moving (matrices N(0, 2/fan-in), norm scales U(0.5, 1.5), other vectors N(0, 0.1^2)) and batch-norm
    statistics reset to zero mean and unit variance."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.is_floating_point():
                    continue
                if name == "weight" and isinstance(module, _SCALED):
                    value = torch.rand(p.shape, generator=gen) + 0.5
                elif p.dim() >= 2:
                    value = torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / max(1, p[0].numel()))
                else:
                    value = torch.randn(p.shape, generator=gen) * 0.1
                p.copy_(value.to(p.device, p.dtype))
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
    return model


_SCALED = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def output_mismatch(
    pruned: nn.Module, reference: nn.Module, inputs: tuple[torch.Tensor, ...], finite_only: bool = False
) -> str | None:
    """Why `pruned` does not compute what `reference` computes on `inputs` (None when it does). With
    `finite_only`, a reference that is not finite everywhere proves nothing and passes."""
    with torch.no_grad():
        want = flat_tensors(reference(*inputs))
        if finite_only and not all(bool(t.isfinite().all()) for t in want if t.is_floating_point()):
            return None
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
