"""Attention heads as prunable groups: a head is removed whole (its query, key and value columns and
its rows of the output projection), for attention modules whose heads Torch-Pruning cannot see.

A layout says, per head, which indices of which parameters belong to it, and which attributes to
update afterwards. Pruning is index selection, so masks follow from the index-encoded copy as for
channel groups. Supported: GPT-2's `GPT2Attention` (fused `c_attn` Conv1D).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["HeadLayout", "head_layout", "head_importance", "prune_heads"]


@dataclass(frozen=True)
class HeadLayout:
    """Per-head parameter slices of one attention module kind."""

    owned: tuple[str, ...]  # children whose Torch-Pruning channel groups this replaces
    heads: Callable[[nn.Module], int]
    slices: Callable[[nn.Module], list[tuple[str, int, list[list[int]]]]]  # (param, dim, indices per head)
    finish: Callable[[nn.Module, int], None]  # update attributes for the new head count


def _gpt2_slices(m: nn.Module) -> list[tuple[str, int, list[list[int]]]]:
    width, hd = m.split_size, m.head_dim
    per_head = [list(range(h * hd, (h + 1) * hd)) for h in range(m.num_heads)]
    qkv = [[part * width + i for part in range(3) for i in idx] for idx in per_head]
    return [("c_attn.weight", 1, qkv), ("c_attn.bias", 0, qkv), ("c_proj.weight", 0, per_head)]


def _gpt2_finish(m: nn.Module, heads: int) -> None:
    m.num_heads, m.split_size = heads, heads * m.head_dim
    m.c_attn.nf, m.c_proj.nx = m.c_attn.weight.shape[1], m.c_proj.weight.shape[0]


_LAYOUTS = {
    "transformers.models.gpt2.modeling_gpt2.GPT2Attention": HeadLayout(
        owned=("c_attn",), heads=lambda m: m.num_heads, slices=_gpt2_slices, finish=_gpt2_finish
    ),
}


def head_layout(module: nn.Module) -> HeadLayout | None:
    cls = type(module)
    layout = _LAYOUTS.get(f"{cls.__module__}.{cls.__qualname__}")
    if layout is not None and getattr(module, "is_cross_attention", False):
        return None  # cross-attention splits its projections differently
    return layout


def head_importance(module: nn.Module, p: int = 1) -> torch.Tensor:
    """Sum of |w|^p over each head's weights."""
    layout = head_layout(module)
    params = dict(module.named_parameters())
    scores = torch.zeros(layout.heads(module))
    with torch.no_grad():
        for name, dim, per_head in layout.slices(module):
            for h, idx in enumerate(per_head):
                scores[h] += params[name].index_select(dim, torch.tensor(idx)).abs().pow(p).sum()
    return scores


def prune_heads(module: nn.Module, keep: list[int]) -> None:
    """Keep only the heads in `keep` (sorted indices)."""
    layout = head_layout(module)
    owners = dict(module.named_modules())
    for name, dim, per_head in layout.slices(module):
        owner, _, attr = name.rpartition(".")
        layer = owners[owner]
        index = torch.tensor(sorted(i for h in keep for i in per_head[h]))  # original order: q | k | v
        setattr(layer, attr, nn.Parameter(getattr(layer, attr).detach().index_select(dim, index)))
    layout.finish(module, len(keep))
