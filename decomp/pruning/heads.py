"""Attention heads as prunable groups: a head is removed whole (its query, key and value columns and
its rows of the output projection), for attention modules whose heads Torch-Pruning cannot see.

A layout says, per unit, which indices of which parameters belong to it, and which attributes to
update afterwards. Pruning is index selection, so masks follow from the index-encoded copy as for
channel groups. Layouts are recognised by structure, so relatives of the models named here work too:

- fused: GPT-2's `GPT2Attention` (one `c_attn` Conv1D holding query | key | value, `c_proj` out);
- paired: a module with `self.query/key/value` Linears and `output.dense` (BERT, RoBERTa, ELECTRA, ...);
- projections: a module with `q_proj`, `k_proj`, `v_proj`, `o_proj` Linears and `head_dim` (Llama,
  Mistral, Qwen2, Hugging Face ViT, ...). With grouped-query attention the unit is one key/value head
  together with the query heads that read it, so every kept query head keeps its key/value head.
- T5: `q`, `k`, `v`, `o` Linears with `n_heads` and `key_value_proj_dim`, and in a stack's first layer a
  relative position bias per head that every later layer of the stack adds to its own scores: the
  self-attention modules of one stack are tied (they keep the same heads), as are its cross-attention
  modules (they share one bias tensor whose head count must match).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["HeadLayout", "head_layout", "head_importance", "prune_heads"]

Slices = list[tuple[str, int, list[list[int]]]]  # (parameter, dim, indices per unit)


@dataclass(frozen=True)
class HeadLayout:
    """Per-unit parameter slices of one attention module kind (a unit is a head, or a key/value head
    with its query heads)."""

    owned: tuple[str, ...]  # children whose Torch-Pruning channel groups this replaces
    heads: Callable[[nn.Module], int]  # units
    slices: Callable[[nn.Module], Slices]
    finish: Callable[[nn.Module, int], None]  # update attributes for the new unit count
    tie: Callable[[str], str | None] = lambda path: None  # modules with the same key keep the same units


def _blocks(width: int, size: int) -> list[list[int]]:
    return [list(range(h * size, (h + 1) * size)) for h in range(width // size)]


def _gpt2_slices(m: nn.Module) -> Slices:
    width, hd = m.split_size, m.head_dim
    per_head = _blocks(width, hd)
    qkv = [[part * width + i for part in range(3) for i in idx] for idx in per_head]
    return [("c_attn.weight", 1, qkv), ("c_attn.bias", 0, qkv), ("c_proj.weight", 0, per_head)]


def _gpt2_finish(m: nn.Module, heads: int) -> None:
    m.num_heads, m.split_size = heads, heads * m.head_dim
    m.c_attn.nf, m.c_proj.nx = m.c_attn.weight.shape[1], m.c_proj.weight.shape[0]


_GPT2 = HeadLayout(owned=("c_attn",), heads=lambda m: m.num_heads, slices=_gpt2_slices, finish=_gpt2_finish)


def _linear_slices(prefix: str, layer: nn.Linear, per_unit: list[list[int]], dim: int) -> Slices:
    out = [(f"{prefix}.weight", dim, per_unit)]
    if dim == 0 and layer.bias is not None:
        out.append((f"{prefix}.bias", 0, per_unit))
    return out


def _paired(m: nn.Module) -> bool:
    inner, output = getattr(m, "self", None), getattr(m, "output", None)
    size = getattr(inner, "attention_head_size", None)
    if not isinstance(size, int) or not isinstance(getattr(output, "dense", None), nn.Linear):
        return False
    q, k, v = (getattr(inner, n, None) for n in ("query", "key", "value"))
    if not all(isinstance(x, nn.Linear) for x in (q, k, v)):
        return False
    width = q.out_features
    return k.out_features == v.out_features == width == output.dense.in_features and width % size == 0


def _paired_slices(m: nn.Module) -> Slices:
    per_head = _blocks(m.self.query.out_features, m.self.attention_head_size)
    out: Slices = []
    for name in ("query", "key", "value"):
        out += _linear_slices(f"self.{name}", getattr(m.self, name), per_head, 0)
    return out + _linear_slices("output.dense", m.output.dense, per_head, 1)


def _paired_finish(m: nn.Module, heads: int) -> None:
    m.self.num_attention_heads, m.self.all_head_size = heads, heads * m.self.attention_head_size


_PAIRED = HeadLayout(
    owned=("self.query", "self.key", "self.value"),
    heads=lambda m: m.self.query.out_features // m.self.attention_head_size,
    slices=_paired_slices,
    finish=_paired_finish,
)


def _projections(m: nn.Module) -> bool:
    layers = [getattr(m, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    hd = getattr(m, "head_dim", None)
    if not isinstance(hd, int) or hd <= 0 or not all(isinstance(x, nn.Linear) for x in layers):
        return False
    q, k, v, o = layers
    kv = k.out_features
    return (
        v.out_features == kv
        and kv % hd == 0
        and q.out_features % kv == 0
        and o.in_features == q.out_features
        and q.in_features == k.in_features == v.in_features  # self-attention on one input
    )


def _projection_slices(m: nn.Module) -> Slices:
    hd, kv = m.head_dim, m.k_proj.out_features
    per_kv = _blocks(kv, hd)
    per_query = _blocks(m.q_proj.out_features, hd * (m.q_proj.out_features // kv))  # the query heads of one kv head
    return (
        _linear_slices("q_proj", m.q_proj, per_query, 0)
        + _linear_slices("k_proj", m.k_proj, per_kv, 0)
        + _linear_slices("v_proj", m.v_proj, per_kv, 0)
        + _linear_slices("o_proj", m.o_proj, per_query, 1)
    )


def _projection_finish(m: nn.Module, units: int) -> None:
    query = m.q_proj.out_features // m.head_dim
    for name, value in (("num_heads", query), ("num_attention_heads", query), ("num_key_value_heads", units)):
        if isinstance(getattr(m, name, None), int):
            setattr(m, name, value)


_PROJECTIONS = HeadLayout(
    owned=("q_proj", "k_proj", "v_proj"),
    heads=lambda m: m.k_proj.out_features // m.head_dim,
    slices=_projection_slices,
    finish=_projection_finish,
)


def _t5(m: nn.Module) -> bool:
    layers = [getattr(m, n, None) for n in ("q", "k", "v", "o")]
    hd, heads = getattr(m, "key_value_proj_dim", None), getattr(m, "n_heads", None)
    if not isinstance(hd, int) or not isinstance(heads, int) or not all(isinstance(x, nn.Linear) for x in layers):
        return False
    q, k, v, o = layers
    return q.out_features == k.out_features == v.out_features == o.in_features == heads * hd


def _t5_slices(m: nn.Module) -> Slices:
    per_head = _blocks(m.q.out_features, m.key_value_proj_dim)
    out: Slices = []
    for name in ("q", "k", "v"):
        out += _linear_slices(name, getattr(m, name), per_head, 0)
    out += _linear_slices("o", m.o, per_head, 1)
    if getattr(m, "has_relative_attention_bias", False):
        out.append(("relative_attention_bias.weight", 1, [[h] for h in range(len(per_head))]))
    return out


def _t5_finish(m: nn.Module, heads: int) -> None:
    m.n_heads, m.inner_dim = heads, heads * m.key_value_proj_dim


def _t5_tie(path: str) -> str | None:
    """`encoder.block.3.layer.0.SelfAttention` -> `encoder.*.SelfAttention`: one stack, one role."""
    stack, sep, rest = path.partition(".block.")
    return f"{stack}.*.{rest.rpartition('.')[2]}" if sep else None


_T5 = HeadLayout(owned=("q", "k", "v"), heads=lambda m: m.n_heads, slices=_t5_slices, finish=_t5_finish, tie=_t5_tie)


def head_layout(module: nn.Module) -> HeadLayout | None:
    cls = type(module)
    if f"{cls.__module__}.{cls.__qualname__}" == "transformers.models.gpt2.modeling_gpt2.GPT2Attention":
        return None if getattr(module, "is_cross_attention", False) else _GPT2  # cross: split differently
    if _paired(module):
        return _PAIRED
    if _projections(module):
        return _PROJECTIONS
    if _t5(module):
        return _T5
    return None


def head_importance(module: nn.Module, p: int = 1) -> torch.Tensor:
    """Sum of |w|^p over each unit's weights."""
    layout = head_layout(module)
    params = dict(module.named_parameters())
    scores = torch.zeros(layout.heads(module))
    with torch.no_grad():
        for name, dim, per_head in layout.slices(module):
            for h, idx in enumerate(per_head):
                scores[h] += params[name].index_select(dim, torch.tensor(idx)).abs().pow(p).sum()
    return scores


def prune_heads(module: nn.Module, keep: list[int]) -> None:
    """Keep only the units in `keep` (sorted indices)."""
    layout = head_layout(module)
    owners = dict(module.named_modules())
    for name, dim, per_head in layout.slices(module):
        owner, _, attr = name.rpartition(".")
        layer = owners[owner]
        index = torch.tensor(sorted(i for h in keep for i in per_head[h]))  # original order: q | k | v
        setattr(layer, attr, nn.Parameter(getattr(layer, attr).detach().index_select(dim, index)))
    for owner in {name.rpartition(".")[0] for name, _, _ in layout.slices(module)}:
        layer = owners[owner]
        if isinstance(layer, nn.Linear):
            layer.out_features, layer.in_features = layer.weight.shape
        elif isinstance(layer, nn.Embedding):
            layer.num_embeddings, layer.embedding_dim = layer.weight.shape
    layout.finish(module, len(keep))
