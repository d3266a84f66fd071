"""What must follow a physical prune besides the weights Torch-Pruning removes.

Attributes that mirror channel counts in a model's Python code: Torch-Pruning resizes layers; a model
that also stores a width as a plain attribute (torchvision's VisionTransformer keeps `hidden_dim` and
reshapes with it) needs that attribute updated too. And attention's temperature (`rescale_attention`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["register_fixup", "rescale_attention", "sync_attributes"]

_FIXUPS: dict[str, Callable[[nn.Module], None]] = {}


def _key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_fixup(cls: type, fix: Callable[[nn.Module], None]) -> None:
    """Run `fix(module)` on every instance of `cls` after physical pruning."""
    _FIXUPS[_key(cls)] = fix


def sync_attributes(model: nn.Module) -> None:
    for module in model.modules():
        fix = _FIXUPS.get(_key(type(module)))
        if fix is not None:
            fix(module)


def _vision_transformer(m: nn.Module) -> None:
    m.hidden_dim = m.conv_proj.out_channels


_FIXUPS["torchvision.models.vision_transformer.VisionTransformer"] = _vision_transformer


def rescale_attention(pruned: nn.Module, original: nn.Module) -> None:
    """Keep each `nn.MultiheadAttention`'s scores what they were after its head width shrank.

    Attention divides query-key products by sqrt(head width). Removing d of D dims from every head
    leaves the products over the kept dims as they were, but the divisor drops to sqrt(D - d); the
    queries are scaled by sqrt((D - d) / D) to make up for it, so the pruned model computes what the
    dense model with those dims zeroed computes.
    """
    before = dict(original.named_modules())
    for path, module in pruned.named_modules():
        if not isinstance(module, nn.MultiheadAttention) or module.head_dim == before[path].head_dim:
            continue
        factor = math.sqrt(module.head_dim / before[path].head_dim)
        width = module.embed_dim
        with torch.no_grad():
            query = module.in_proj_weight if module.in_proj_weight is not None else module.q_proj_weight
            query[:width].mul_(factor)
            if module.in_proj_bias is not None:
                module.in_proj_bias[:width].mul_(factor)
