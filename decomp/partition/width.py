"""Width decomposition: a layer's output channels split across parts (tensor parallelism), as a rewrite of
the traced model that every later step (graph, partition plan, split, export, runtime) takes as it is.

`WidthSplit(layer, ways)` splits a Linear or Conv2d's output channels (features) into `ways` slices:
`ways` smaller layers, each computing its slice from the whole input, then a concatenation (the gather).
`WidthSplit(layer, ways, then=next_layer)` pairs it with the layer that reads those channels (the
Megatron-LM column/row pair of a transformer MLP, or two consecutive convolutions): slice k runs the
first layer's slice, the per-channel ops between the two (activations, dropout, BatchNorm sliced per
channel) and the second layer on its slice of the input channels only; the slices' outputs are summed
(the reduction; the second layer's bias is added once). Nothing crosses between slices until the gather
or the sum. `WidthSplit(attention, ways)` on an `nn.MultiheadAttention` splits its heads: way k runs its
heads' query/key/value projections, their attention and their columns of the output projection
(`HeadSlice`); the ways' outputs are summed.

Whole blocks of models traced with torch.export (whose graphs are ATen ops, not layers) are split on the
modules instead (`BLOCKS`: Hugging Face GPT-2's MLP and self-attention): the block becomes `SummedWays`,
copies of it on their slices of hidden channels or heads, their outputs summed; each way's ops are then
found in the traced graph by the module they run in.

`split_width(model, inputs, splits)` returns the rewritten model with each slice's nodes named
(`WidthSplitModel.slices`) and checks it: its outputs must equal the model's on the example inputs
(float32: max abs diff <= 1e-4), else nothing is returned. `width_plan(graph, split)` runs way k of every
split on device k (a DAG plan, see its docstring: `decomp.partition.split_model`, `export_split` and the
runtimes run it; the bytes each slice receives and sends are the plan's crossings, what
`partition_metrics` counts).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from decomp.costs import module_path
from decomp.errors import InvalidPlanError
from decomp.graph import ModelGraph
from decomp.partition.plan import PartitionPlan
from decomp.partition.split import flat_outputs, outputs_diff
from decomp.tracing import per_channel, trace

__all__ = ["HeadSlice", "WidthSplit", "WidthSplitModel", "parse_width", "split_width", "width_plan"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class WidthSplit:
    """Split `layer`'s output channels into `ways` slices; with `then`, also the layer reading them (row
    split, slices summed). Layers by module path, e.g. `encoder.layers.0.mlp.0`.

    Group decomposition (`decomp.partition.branches`): `through` names the layers between `layer` and
    `then`, each run per way on its own group of input and output channels (block-diagonal: the weights
    between groups must be zero, which the check against the model enforces), so each way is an
    independent branch from `layer` to `then`. `channels[j][k]`: the channel indices of way k in the
    output of the j-th layer of the chain (`layer`, then each of `through`); default: contiguous slices."""

    layer: str
    ways: int
    then: str | None = None
    through: tuple[str, ...] = ()
    channels: tuple[tuple[tuple[int, ...], ...], ...] | None = None

    KEYS = ("layer", "ways", "then", "through", "channels")

    def __post_init__(self) -> None:
        object.__setattr__(self, "through", tuple(self.through))
        if self.channels is not None:
            grouped = tuple(tuple(tuple(int(i) for i in g) for g in c) for c in self.channels)
            object.__setattr__(self, "channels", grouped)
        if self.ways < 2:
            raise InvalidPlanError(f"a width split of {self.layer} needs ways >= 2, got {self.ways}")
        if (self.through or self.channels is not None) and self.then is None:
            raise InvalidPlanError(
                f"{self.layer}: channel groups and layers run through per group need a last layer ('then') to sum"
            )
        if self.channels is not None and (
            len(self.channels) != 1 + len(self.through) or any(len(c) != self.ways for c in self.channels)
        ):
            raise InvalidPlanError(
                f"{self.layer}: channels needs one grouping per layer before 'then' ({1 + len(self.through)}), "
                f"each of {self.ways} ways"
            )

    def to_json(self) -> dict:
        out = {"layer": self.layer, "ways": self.ways, "then": self.then}
        if self.through:
            out["through"] = list(self.through)
        if self.channels is not None:
            out["channels"] = [[list(g) for g in c] for c in self.channels]
        return out

    @classmethod
    def from_json(cls, data: dict) -> WidthSplit:
        unknown = sorted(set(data) - set(cls.KEYS))
        if unknown:
            raise InvalidPlanError(f"unknown width split key(s) {', '.join(unknown)}; valid: {', '.join(cls.KEYS)}")
        through = tuple(data.get("through", ()))
        return cls(str(data["layer"]), int(data["ways"]), data.get("then"), through, data.get("channels"))


def parse_width(text: str) -> WidthSplit:
    """`LAYER:WAYS` or `LAYER:WAYS:NEXT` (the command line's form) as a `WidthSplit`."""
    fields = text.split(":")
    if len(fields) not in (2, 3) or not fields[1].isdigit():
        raise InvalidPlanError(
            f"width split {text!r}: write LAYER:WAYS or LAYER:WAYS:NEXT, e.g. encoder.mlp.0:2:encoder.mlp.3"
        )
    return WidthSplit(fields[0], int(fields[1]), fields[2] if len(fields) == 3 else None)


@dataclass
class WidthSplitModel:
    """The rewritten model; `slices[i][k]`: the node names of way k of `splits[i]`; `joins[i]`: the nodes
    that gather (concatenation) or reduce (sum) split i, the last one making the result."""

    module: fx.GraphModule
    splits: tuple[WidthSplit, ...]
    slices: tuple[tuple[tuple[str, ...], ...], ...]
    joins: tuple[tuple[str, ...], ...]
    max_abs_diff: float  # against the model on the example inputs (float32: <= tolerance)


def split_width(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    splits: Sequence[WidthSplit],
    leaf_modules: Sequence[str | type] = (),
    tolerance: float = 1e-4,
    tracer: str = "fx",
) -> WidthSplitModel:
    """Rewrite `model` so every split's slices are separate layers (see the module docstring); checked
    against the model on `example_inputs`. Splits naming a whole block this module knows (`BLOCKS`: Hugging
    Face GPT-2's MLP and attention) are made on the modules, for either tracer; the others on the torch.fx
    graph (`tracer` fx)."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    blocks = [s for s in splits if type(_submodule(model, s.layer)).__name__ in BLOCKS]
    if blocks:
        if len(blocks) != len(splits):
            raise InvalidPlanError("split either whole blocks (e.g. a GPT-2 MLP or attention) or layers, not both")
        return _split_blocks(model, inputs, blocks, tracer, leaf_modules, tolerance)
    if tracer != "fx":
        raise InvalidPlanError(
            f"width splits of single layers rewrite torch.fx graphs; this model traces with {tracer}: split whole "
            f"blocks instead ({', '.join(BLOCKS)})"
        )
    gm = trace(model, inputs, tracer="fx", leaf_modules=leaf_modules)
    slices, joins = [], []
    for split in splits:
        ways, join = _rewrite(gm, split)
        slices.append(ways)
        joins.append(join)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    # traced again, as `split_model` and `build_graph` will trace it: the node names they see
    final = trace(gm, inputs, tracer="fx", leaf_modules=leaf_modules)
    names = _renamed(gm, final)
    slices = [tuple(tuple(m for n in way for m in names[n]) for way in ways) for ways in slices]
    joins = [tuple(m for n in nodes for m in names[n]) for nodes in joins]
    diff = _check(model, final, inputs, tolerance, splits)
    return WidthSplitModel(final, tuple(splits), tuple(slices), tuple(joins), diff)


# -- whole blocks, split on the modules --------------------------------------------------------------------
class SummedWays(nn.Module):
    """Copies of a block, each on its slice of channels or heads; their outputs summed (a tuple output: its
    first element summed, the rest from the first way)."""

    def __init__(self, ways: Sequence[nn.Module]) -> None:
        super().__init__()
        self.ways = nn.ModuleList(ways)

    def forward(self, *args, **kwargs):
        outs = [way(*args, **kwargs) for way in self.ways]
        if isinstance(outs[0], tuple):
            return (_summed([o[0] for o in outs]), *outs[0][1:])
        return _summed(outs)


def _summed(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total


def _conv1d(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A Hugging Face `Conv1D` (y = x @ weight + bias; weight (in, out)) holding these tensors."""
    from transformers.pytorch_utils import Conv1D

    layer = Conv1D(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer.to(weight.device, weight.dtype)


def _gpt2_mlp_ways(mlp: nn.Module, ways: int) -> list[nn.Module]:
    """GPT-2's MLP (c_fc -> act -> c_proj -> dropout) in column/row slices of its hidden width."""
    hidden = mlp.c_fc.weight.shape[1]
    if ways > hidden:
        raise InvalidPlanError(f"the MLP has {hidden} hidden channels, fewer than {ways} ways")
    out = []
    for k, idx in enumerate(torch.arange(hidden).tensor_split(ways)):
        way = copy.deepcopy(mlp)
        way.c_fc = _conv1d(mlp.c_fc.weight[:, idx], mlp.c_fc.bias[idx])
        bias = mlp.c_proj.bias if k == 0 else torch.zeros_like(mlp.c_proj.bias)
        way.c_proj = _conv1d(mlp.c_proj.weight[idx], bias)
        out.append(way)
    return out


def _gpt2_attention_ways(attn: nn.Module, ways: int) -> list[nn.Module]:
    """GPT-2's self-attention in groups of heads: each way its heads' query/key/value columns of c_attn, the
    attention over them and their rows of c_proj."""
    if attn.is_cross_attention:
        raise InvalidPlanError("a cross-attention block cannot be split by heads here; split its self-attention")
    e, d, heads = attn.embed_dim, attn.head_dim, attn.num_heads
    if ways > heads:
        raise InvalidPlanError(f"the attention has {heads} heads, fewer than {ways} ways")
    out = []
    for k, group in enumerate(torch.arange(heads).tensor_split(ways)):
        idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in group.tolist()])
        qkv = torch.cat([idx, e + idx, 2 * e + idx])
        way = copy.deepcopy(attn)
        way.num_heads, way.split_size = len(group), len(idx)
        way.c_attn = _conv1d(attn.c_attn.weight[:, qkv], attn.c_attn.bias[qkv])
        bias = attn.c_proj.bias if k == 0 else torch.zeros_like(attn.c_proj.bias)
        way.c_proj = _conv1d(attn.c_proj.weight[idx], bias)
        out.append(way)
    return out


BLOCKS = {"GPT2MLP": _gpt2_mlp_ways, "GPT2Attention": _gpt2_attention_ways}


def _submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _split_blocks(model, inputs, splits, tracer, leaf_modules, tolerance) -> WidthSplitModel:
    from decomp.build import build_graph

    new = copy.deepcopy(model)
    for split in splits:
        if split.then is not None or split.through or split.channels is not None:
            raise InvalidPlanError(f"{split.layer} is a whole block: give its ways only (no then/through/channels)")
        block = new.get_submodule(split.layer)
        parent, _, name = split.layer.rpartition(".")
        owner = new.get_submodule(parent) if parent else new
        setattr(owner, name, SummedWays(BLOCKS[type(block).__name__](block, split.ways)))
    diff = _check(model, new, inputs, tolerance, splits)
    graph = build_graph(new, inputs, tracer, leaf_modules=leaf_modules)  # the names split_model will see
    slices, joins = [], []
    for split in splits:
        ways = []
        for k in range(split.ways):
            inside = f"{split.layer}.ways.{k}."
            ways.append(tuple(n for n in graph.compute_nodes() if f"{graph[n].get('module', '')}.".startswith(inside)))
        slices.append(tuple(ways))
        joins.append(tuple(n for n in graph.compute_nodes() if graph[n].get("module") == split.layer))
    return WidthSplitModel(new, tuple(splits), tuple(slices), tuple(joins), diff)


def _renamed(before: fx.GraphModule, after: fx.GraphModule) -> dict[str, tuple[str, ...]]:
    """Node name in `before` -> names of the same op in `after`, a trace of it: the same ops in order, except
    that a `HeadSlice` (one node before) is traced through (the ops inside it after)."""
    new, at, out = list(after.graph.nodes), 0, {}
    for node in before.graph.nodes:
        if node.op == "call_module" and isinstance(before.get_submodule(node.target), HeadSlice):
            inside = []
            while at < len(new) and f"{module_path(new[at])}.".startswith(f"{node.target}."):
                inside.append(new[at].name)
                at += 1
            out[node.name] = tuple(inside)
            continue
        if at >= len(new) or (new[at].op, str(new[at].target)) != (node.op, str(node.target)):
            raise InvalidPlanError("the width-split model traces differently from how it was built; report this model")
        out[node.name] = (new[at].name,)
        at += 1
    return out


def width_plan(graph: ModelGraph, split: WidthSplitModel, devices: Sequence[str] = ()) -> PartitionPlan:
    """A DAG plan of `graph` (built from `split.module`) that runs way k of every split on device k: split i
    (in the order the model reaches them) way k is part i x W + k (W: the most ways of any split); the ops
    before the first split run with its way 0, the join of a split and the ops after it with its last way,
    up to the next split. Every tensor then flows from a lower part to a higher one (the parts form a DAG
    the runtime runs), the slices of a split exchange nothing, and `devices` (one per way, optional) gives
    part i x W + k device k."""
    width = max(s.ways for s in split.splits)
    if devices and len(devices) != width:
        raise InvalidPlanError(f"{len(devices)} devices for width splits of {width} ways; give one per way")
    way_of = {n: (i, k) for i, ways in enumerate(split.slices) for k, nodes in enumerate(ways) for n in nodes}
    join_of = {n: i for i, nodes in enumerate(split.joins) for n in nodes}
    part, current = {}, 0
    for n in graph.compute_nodes():
        if n in way_of:
            i, k = way_of[n]
            part[n] = i * width + k
        else:
            if n in join_of:
                i = join_of[n]
                current = i * width + split.splits[i].ways - 1
            part[n] = current
    parts = sorted(set(part.values()))
    hints = tuple(devices[p % width] for p in parts) if devices else ()
    return PartitionPlan.from_assignment(part, "dag", devices=hints, graph=graph)


# -- the rewrite ----------------------------------------------------------------------------------------
def _module_node(gm: fx.GraphModule, path: str) -> tuple[fx.Node, nn.Module]:
    nodes = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == path]
    if not nodes:
        known = [n.target for n in gm.graph.nodes if n.op == "call_module"][:8]
        raise InvalidPlanError(f"no layer {path!r} is called in the traced model; layers are e.g. {', '.join(known)}")
    if len(nodes) > 1:
        raise InvalidPlanError(f"layer {path!r} is called {len(nodes)} times; a width split needs one call")
    return nodes[0], gm.get_submodule(path)


def _channel_dim(module: nn.Module, path: str) -> int:
    if isinstance(module, nn.Linear):
        return -1
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return 1
    raise InvalidPlanError(
        f"layer {path!r} is a {type(module).__name__}; width splits take nn.Linear and nn.Conv2d with groups=1"
    )


def _chain(first: fx.Node, last: fx.Node, gm: fx.GraphModule, split: WidthSplit) -> list[fx.Node]:
    """The per-channel ops from `first` to `last` (exclusive), each read only by the next."""
    chain, node = [], first
    while True:
        users = list(node.users)
        if len(users) != 1:
            raise InvalidPlanError(
                f"{split.layer} -> {split.then}: {node.name} is read by {len(users)} ops; a paired width split "
                "needs a single path of per-channel ops between the two layers"
            )
        (node,) = users
        if node is last:
            return chain
        if not per_channel(node, gm, _NORMS) or len(node.all_input_nodes) != 1:
            raise InvalidPlanError(
                f"{split.layer} -> {split.then}: {node.name} ({node.target}) mixes channels; only activations, "
                "dropout and BatchNorm may sit between the two layers of a paired width split"
            )
        chain.append(node)


def _rewrite(gm: fx.GraphModule, split: WidthSplit) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]]:
    first, layer = _module_node(gm, split.layer)
    if isinstance(layer, nn.MultiheadAttention):
        if split.through:
            raise InvalidPlanError(f"{split.layer}: an attention's head split takes no 'through' layers")
        return _rewrite_heads(gm, split, first, layer)
    dim = _channel_dim(layer, split.layer)
    # the chain: `layer`, each of `through`, then `then`; per-channel ops between consecutive ones
    paths = [split.layer, *split.through, *([split.then] if split.then is not None else [])]
    nodes, modules = [first], [layer]
    for path in paths[1:]:
        node, module = _module_node(gm, path)
        if _channel_dim(module, path) != dim:
            raise InvalidPlanError(f"{split.layer} and {path} must both be Linear or both Conv2d")
        made = modules[-1].out_features if dim == -1 else modules[-1].out_channels
        wanted = module.in_features if dim == -1 else module.in_channels
        if wanted != made:
            raise InvalidPlanError(f"{path} reads {wanted} channels, {paths[len(nodes) - 1]} makes {made}")
        nodes.append(node)
        modules.append(module)
    between = [_chain(a, b, gm, split) for a, b in zip(nodes, nodes[1:], strict=False)]
    spaces = _spaces(split, modules, dim)
    graph = gm.graph
    ways, outs = [], []
    anchor = nodes[-1]
    with graph.inserting_before(anchor):
        for k in range(split.ways):
            names: list[str] = []
            column = _sliced(layer, outputs=spaces[0][k])
            node = _add(gm, graph, f"{split.layer}_w{k}", column, first.args, first.kwargs, names)
            for j, path in enumerate(paths[1:], start=1):
                idx = spaces[j - 1][k]
                for op in between[j - 1]:
                    target = op.target
                    if op.op == "call_module" and isinstance(gm.get_submodule(op.target), _NORMS):
                        target = _add_module(gm, f"{op.target}_w{k}", _norm_slice(gm.get_submodule(op.target), idx))
                    args, name = (node, *op.args[1:]), f"{op.name}_w{k}"
                    node = graph.create_node(op.op, target, args, dict(op.kwargs), name=name)
                    names.append(node.name)
                if j < len(spaces):  # a layer run through: its group's inputs to its group's outputs
                    sliced = _sliced(modules[j], idx, spaces[j][k])
                else:  # the last layer: its inputs of this way, summed over the ways (its bias added once)
                    sliced = _sliced(modules[j], idx, bias=k == 0)
                node = _add(gm, graph, f"{path}_w{k}", sliced, (node,), {}, names)
            ways.append(tuple(names))
            outs.append(node)
        joins = [graph.call_function(torch.cat, (outs,), {"dim": dim})] if split.then is None else _sums(graph, outs)
    anchor.replace_all_uses_with(joins[-1])
    graph.erase_node(anchor)
    for a, ops in zip(reversed(nodes[:-1]), reversed(between), strict=True):
        for op in reversed(ops):
            graph.erase_node(op)
        graph.erase_node(a)
    return tuple(ways), tuple(j.name for j in joins)


def _spaces(split: WidthSplit, modules: list[nn.Module], dim: int) -> list[list[torch.Tensor]]:
    """Channel indices per way in the output of each layer of the chain but the last."""
    out = []
    for j, module in enumerate(modules[: 1 + len(split.through)]):
        channels = module.out_features if dim == -1 else module.out_channels
        if split.channels is None:
            if split.ways > channels:
                raise InvalidPlanError(f"{split.layer} has {channels} output channels, fewer than {split.ways} ways")
            out.append(list(torch.arange(channels).tensor_split(split.ways)))
            continue
        groups = [torch.as_tensor(g, dtype=torch.long) for g in split.channels[j]]
        flat = torch.cat(groups).sort().values if groups else torch.zeros(0)
        if any(len(g) == 0 for g in groups) or not torch.equal(flat, torch.arange(channels)):
            raise InvalidPlanError(
                f"{split.layer}: the channel groups of layer {j} of the chain must cover its {channels} channels "
                "once each, none empty"
            )
        out.append(groups)
    return out


class HeadSlice(nn.Module):
    """Some heads of an `nn.MultiheadAttention`: their query, key and value projections, attention, and
    their columns of the output projection (its bias on one slice only): the slices' outputs sum to the
    attention's output."""

    def __init__(self, mha: nn.MultiheadAttention, heads: Sequence[int], with_bias: bool) -> None:
        super().__init__()
        e, d = mha.embed_dim, mha.head_dim
        idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads])
        self.heads, self.head_dim, self.batch_first = len(heads), d, mha.batch_first
        bias = mha.in_proj_bias
        self.q, self.k, self.v = (nn.Linear(e, len(idx), bias=bias is not None) for _ in range(3))
        self.out = nn.Linear(len(idx), e, bias=with_bias and mha.out_proj.bias is not None)
        weight = mha.in_proj_weight
        with torch.no_grad():
            for i, proj in enumerate((self.q, self.k, self.v)):
                proj.weight.copy_(weight[i * e + idx])
                if bias is not None:
                    proj.bias.copy_(bias[i * e + idx])
            self.out.weight.copy_(mha.out_proj.weight[:, idx])
            if self.out.bias is not None:
                self.out.bias.copy_(mha.out_proj.bias)
        self.to(weight.device, weight.dtype)

    def forward(self, query, key, value, need_weights=True, is_causal=False):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n = query.shape[0]
        q, k, v = (
            p(t).view(n, -1, self.heads, self.head_dim).transpose(1, 2)
            for p, t in ((self.q, query), (self.k, key), (self.v, value))
        )
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        out = self.out(out.transpose(1, 2).reshape(n, -1, self.heads * self.head_dim))
        return out if self.batch_first else out.transpose(0, 1)


def _rewrite_heads(gm: fx.GraphModule, split: WidthSplit, node: fx.Node, mha: nn.MultiheadAttention):
    """The attention's heads in `split.ways` groups (`HeadSlice`), their outputs summed."""
    where = f"{split.layer} ({mha.num_heads} heads)"
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        raise InvalidPlanError(f"{where}: a head split needs one query/key/value width, no bias_k/v, no zero attention")
    if split.then is not None:
        raise InvalidPlanError(f"{where}: an attention's head split pairs with its own output projection; drop 'then'")
    if split.ways > mha.num_heads:
        raise InvalidPlanError(f"{where} has fewer heads than {split.ways} ways")
    args = list(node.args) + [None] * (3 - len(node.args))
    kwargs = dict(node.kwargs)
    query, key, value = (kwargs.pop(k, a) for k, a in zip(("query", "key", "value"), args[:3], strict=True))
    extra = {k: v for k, v in kwargs.items() if v is not None and k not in ("need_weights", "is_causal")}
    if len(node.args) > 3 or extra or kwargs.get("need_weights") not in (False, None):
        raise InvalidPlanError(
            f"{where} is called with masks or for its attention weights; a head split takes need_weights=False and "
            "no masks"
        )
    users = list(node.users)
    outputs = [u for u in users if u.op == "call_function" and u.target is operator.getitem and u.args[1] == 0]
    if any(u not in outputs and (u.target is not operator.getitem or u.users) for u in users):
        raise InvalidPlanError(f"{where}: its output is used other than as [0]; a head split returns the output only")
    graph, ways, outs = gm.graph, [], []
    with graph.inserting_before(node):
        for k, heads in enumerate(torch.arange(mha.num_heads).tensor_split(split.ways)):
            names: list[str] = []
            sliced = HeadSlice(mha, heads.tolist(), with_bias=k == 0).train(mha.training)
            causal = {"is_causal": kwargs["is_causal"]} if kwargs.get("is_causal") else {}
            outs.append(_add(gm, graph, f"{split.layer}_w{k}", sliced, (query, key, value), causal, names))
            ways.append(tuple(names))
        joins = _sums(graph, outs)
    for u in users:
        if u in outputs:
            u.replace_all_uses_with(joins[-1])
        graph.erase_node(u)
    graph.erase_node(node)
    return tuple(ways), tuple(j.name for j in joins)


def _sums(graph: fx.Graph, outs: Sequence[fx.Node]) -> list[fx.Node]:
    """The add nodes summing `outs` in order; the last one holds the total."""
    joins = [outs[0]]
    for out in outs[1:]:
        joins.append(graph.call_function(operator.add, (joins[-1], out)))
    return joins[1:]


def _add(gm, graph, path, module, args, kwargs, names) -> fx.Node:
    target = _add_module(gm, path, module)
    node = graph.create_node("call_module", target, tuple(args), dict(kwargs), name=target.replace(".", "_"))
    names.append(node.name)
    return node


def _add_module(gm: fx.GraphModule, path: str, module: nn.Module) -> str:
    parent, _, name = path.rpartition(".")
    target = f"{parent}.{name}" if parent else name
    owner = gm.get_submodule(parent) if parent else gm
    owner.add_module(name, module)
    return target


def _sliced(
    layer: nn.Module, inputs: torch.Tensor | None = None, outputs: torch.Tensor | None = None, bias: bool = True
) -> nn.Module:
    """`layer` from input channels `inputs` to output channels `outputs` (None: all of them); without `bias`
    its bias is left out (a row slice whose sum another slice adds it to)."""
    w = layer.weight if outputs is None else layer.weight[outputs]
    w = w if inputs is None else w[:, inputs]
    bias = bias and layer.bias is not None
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            out = nn.Linear(w.shape[1], w.shape[0], bias=bias)
        else:
            out = _conv_like(layer, w.shape[1], w.shape[0], bias)
        out = out.to(layer.weight.device, layer.weight.dtype)
        out.weight.copy_(w)
        if bias:
            out.bias.copy_(layer.bias if outputs is None else layer.bias[outputs])
    return out.train(layer.training)


def _conv_like(conv: nn.Conv2d, cin: int, cout: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(
        cin,
        cout,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        1,
        bias,
        conv.padding_mode,
    )


def _norm_slice(norm: nn.Module, idx: torch.Tensor) -> nn.Module:
    out = type(norm)(len(idx), norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
    out = out.to(next(iter(norm.buffers()), torch.zeros(())).device)
    with torch.no_grad():
        if norm.affine:
            out.weight.copy_(norm.weight[idx])
            out.bias.copy_(norm.bias[idx])
        if norm.track_running_stats:
            out.running_mean.copy_(norm.running_mean[idx])
            out.running_var.copy_(norm.running_var[idx])
            out.num_batches_tracked.copy_(norm.num_batches_tracked)
    return out.train(norm.training)


def _check(model: nn.Module, rewritten: nn.Module, inputs: tuple, tolerance: float, splits) -> float:
    """The largest difference of `rewritten`'s outputs from `model`'s on `inputs`; above `tolerance`, an error."""
    with torch.inference_mode():
        want = flat_outputs(model(*inputs))
        got = flat_outputs(rewritten(*inputs))
    diff = outputs_diff(got, want, "the width-split model", InvalidPlanError)
    if diff > tolerance:
        names = ", ".join(s.layer for s in splits)
        raise InvalidPlanError(
            f"the width split of {names} changes the outputs (max abs diff {diff:.2e} > {tolerance:g}); "
            "nothing was returned"
        )
    return diff
