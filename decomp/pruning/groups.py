"""Coupling groups for structured pruning, from Torch-Pruning's dependency graph.

A group is a set of channels that must be removed together: the output channels of a layer, the
BatchNorm/LayerNorm after it, every layer coupled through residual adds, concats and splits, and
the matching input channels of the layers that read them. Each group is named by its root layer
(the layer whose output channels it prunes first). Groups whose channels reach the model's output
(e.g. the classifier's classes, or a feature map returned and also read by other layers) are left
out: pruning them would change what the model returns. So are groups whose channels Torch-Pruning
cannot map exactly (`GroupIndex.skipped` says why); `apply_plan`'s equivalence check catches the
mappings it gets wrong without noticing.
"""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping as tp_index_mapping

from decomp.errors import SpecError, TracingError
from decomp.graph import ModelGraph
from decomp.pruning.bounds import Bounds, DiscoveryLimit, GroupLimit, bounded
from decomp.pruning.coverage import flat_tensors, output_layers, unpruned_layers
from decomp.pruning.heads import HeadLayout, head_layout
from decomp.pruning.layers import custom_pruners, custom_root_types

__all__ = ["CouplingGroup", "GroupIndex", "ROOT_TYPES", "annotate_graph", "find_groups", "pruned_side"]

ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class CouplingGroup:
    """Channels that are pruned together. `layers` lists (module path, 'out' | 'in') per coupled layer.

    `kind` is `channels` (a Torch-Pruning group) or `heads` (an attention module's heads, `channels`
    then counts heads, removed whole; `members`: the attention modules that keep the same heads, where
    they share per-head state, as T5's layers share one relative position bias; else the group id).
    `slices` > 1 when a grouped convolution, a GroupNorm or an `nn.MultiheadAttention` runs through the
    group: its channels form `slices` equal slices (conv groups, norm groups, heads), and a removal must
    take the same positions from every slice, so each keeps the same width. `multiple`: the kept count
    must be a multiple of it (an attention layer's head count).
    """

    id: str
    channels: int
    layers: tuple[tuple[str, str], ...]
    slices: int = 1
    multiple: int = 1
    kind: str = "channels"
    members: tuple[str, ...] = ()

    @property
    def head_modules(self) -> tuple[str, ...]:
        """The attention modules a head group prunes alike."""
        return self.members or (self.id,)

    @property
    def producers(self) -> tuple[str, ...]:
        """Modules whose output channels are these channels."""
        return tuple(path for path, side in self.layers if side == "out")


class GroupIndex:
    """The coupling groups of one model, with the dependency graph that found them. `skipped`: groups
    left out -> why; `unpruned`: layers with parameters that no group covers -> why."""

    def __init__(
        self,
        model: nn.Module,
        dependency_graph: tp.DependencyGraph,
        groups: dict[str, CouplingGroup],
        skipped: dict[str, str] | None = None,
        unpruned: dict[str, str] | None = None,
    ):
        self.model = model
        self.dg = dependency_graph
        self.groups = groups
        self.skipped = dict(skipped or {})
        self.unpruned = dict(unpruned or {})
        self._modules = dict(model.named_modules())

    def __iter__(self):
        return iter(self.groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __contains__(self, group_id: str) -> bool:
        return group_id in self.groups

    def __getitem__(self, group_id: str) -> CouplingGroup:
        return self.groups[group_id]

    def without(self, reasons: dict[str, str]) -> GroupIndex:
        """This index less the groups in `reasons` (group -> why), which join `skipped`."""
        kept = {gid: g for gid, g in self.groups.items() if gid not in reasons}
        return GroupIndex(self.model, self.dg, kept, {**self.skipped, **reasons}, self.unpruned)

    def keeping(self, names: Sequence[str]) -> GroupIndex:
        """This index less the groups a user asked to keep whole: each name is a group id or a module path, and
        keeps every group with a layer at that path or under it (`encoder.layer.0` keeps the groups of every
        layer in that block). A name that is neither a group nor a module of the model is an error naming
        the closest ones; a module no group covers is already whole."""
        reasons: dict[str, str] = {}
        for name in names:
            matched = [
                gid
                for gid, group in self.groups.items()
                if gid == name or any(path == name or path.startswith(name + ".") for path, _ in group.layers)
            ]
            if not matched and name not in self._modules and name not in self.skipped:
                close = difflib.get_close_matches(name, [*self.groups, *self._modules], n=4, cutoff=0.5)
                hint = f"; closest: {', '.join(close)}" if close else ""
                raise SpecError(
                    f"keep {name!r}: the model has no coupling group or module of that name{hint} "
                    "(`decomp graph MODEL` lists the groups and their layers)"
                )
            for gid in matched:
                reasons.setdefault(gid, f"kept whole as asked (keep {name})")
        return self.without(reasons)

    def on_copy(self, copy: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> GroupIndex:
        """These groups over `copy`, a copy of the model (the index-encoded one the pruning runs on): its own
        dependency graph is traced, but the groups are not enumerated again (on large models that
        enumeration is most of the discovery's time); `tp_group` finds each from its root layer."""
        dg, _, _ = _dependency_graph(copy, tuple(example_inputs))
        return GroupIndex(copy, dg, self.groups, self.skipped, self.unpruned)

    def tp_group(self, group_id: str, idxs: list[int] | None = None) -> tp.Group:
        """The Torch-Pruning group rooted at `group_id`'s layer, for the given channel indices."""
        root = self._modules[group_id]
        idxs = list(range(self.groups[group_id].channels)) if idxs is None else idxs
        return self.dg.get_pruning_group(root, self.dg.get_pruner_of_module(root).prune_out_channels, idxs)


def pruned_side(handler) -> str:
    """Which side of a layer a Torch-Pruning pruning function removes channels from: 'in' or 'out'."""
    return "in" if handler.__name__.endswith("in_channels") else "out"


def find_groups(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> GroupIndex:
    """Find the prunable coupling groups of `model` (in eval mode) on `example_inputs`.

    Groups Torch-Pruning cannot map exactly (its enumeration fails, or it maps channels onto indices a
    layer does not have, or onto a GroupNorm / attention layer through a reshape) are left out and
    listed in `GroupIndex.skipped`; layers no group covers are listed in `GroupIndex.unpruned`.
    """
    model.eval()
    names = {id(m): n for n, m in model.named_modules()}
    names.update((id(p), n) for n, p in model.named_parameters())
    modules = dict(model.named_modules())
    try:
        with bounded() as bounds:
            dg, returned, unmapped = _dependency_graph(model, tuple(example_inputs))
            layouts = {path: layout for path, m in modules.items() if (layout := head_layout(m)) is not None}
            claimed = _head_owned(modules, layouts)
            found = list(_tp_groups(dg, (*ROOT_TYPES, *custom_root_types()), claimed, bounds))
    except DiscoveryLimit as limit:
        raise TracingError(
            f"finding the coupling groups of {type(model).__name__} stopped: {limit}. Torch-Pruning's enumeration "
            "grows without bound on some topologies (index maps through many slices, rolls and reshapes); this "
            "model cannot be pruned structurally here. Unstructured pruning (--method magnitude, han or nm) "
            "still works."
        ) from None
    outputs = output_layers(dg, flat_tensors(returned), model)
    order = {name: i for i, name in enumerate(modules)}
    groups: dict[str, CouplingGroup] = {}
    left_out: dict[str, tuple[str, set[str]]] = {}
    at_output: set[str] = set()
    roots = (*ROOT_TYPES, *custom_root_types())
    for root, group, error in found:
        if isinstance(error, GroupLimit):
            left_out[names[id(root)]] = (f"{error}; left whole (a bound on discovery)", {names[id(root)]})
            continue
        if error is not None:
            why = f"Torch-Pruning cannot follow its channels ({type(error).__name__}: {error})"
            if unmapped:
                why += f"; the model has {len(unmapped)} reshape(s) or concat(s) it cannot map, e.g. a channel shuffle"
            left_out[names[id(root)]] = (why, {names[id(root)]})
            continue
        items = [(item.dep.target.module, pruned_side(item.dep.handler), item) for item in group]
        layers = list(dict.fromkeys((names[id(t)], side) for t, side, _ in items if id(t) in names))
        if any(side == "out" and id(target) in outputs for target, side, _ in items):
            at_output.update(path for path, _ in layers)  # these channels are the model's output channels
            continue
        # named by its first producer layer in definition order, so the name does not depend
        # on the order Torch-Pruning happened to visit the group
        producers = [p for p, side in layers if side == "out" and isinstance(modules.get(p), roots)]
        gid = min(producers, key=order.__getitem__)
        channels = len(group[0].idxs)
        through = [unmapped[id(t)] for t, _, _ in items if id(t) in unmapped]
        if through:
            left_out[gid] = (through[0], {path for path, _ in layers})
            continue
        slices, why = _slices(dg, items, channels, names)
        if why is None:
            slices, why = _closure(dg, modules[gid], channels, slices)
        if why is not None:
            left_out[gid] = (why, {path for path, _ in layers})
            continue
        multiple = math.lcm(1, *(t.num_heads for t, _, _ in items if isinstance(t, nn.MultiheadAttention)))
        groups[gid] = CouplingGroup(gid, channels, tuple(layers), slices, multiple)
    _add_head_groups(modules, layouts, groups, left_out)
    covered = {path for g in groups.values() for path, _ in g.layers}
    unpruned = unpruned_layers(model, dg, covered, left_out, at_output)
    ordered = dict(sorted(groups.items(), key=lambda kv: order[kv[0]]))
    return GroupIndex(model, dg, ordered, {gid: why for gid, (why, _) in left_out.items()}, unpruned)


def _dependency_graph(model: nn.Module, inputs: tuple[torch.Tensor, ...]):
    """Torch-Pruning's dependency graph of `model`, what the model returned while it was traced, and the
    reshapes whose channel mapping it could not work out (the op module's id -> why groups through it are
    left out)."""
    returned = []

    def keep(out):
        returned.append(out)
        return out

    try:
        with warnings.catch_warnings():  # its note on parameters outside layers: decomp's oracle checks those
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected", category=UserWarning)
            dg = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=inputs if len(inputs) > 1 else inputs[0],
                customized_pruners=custom_pruners(model),
                output_transform=keep,
            )
    except Exception as err:  # noqa: BLE001 - any failure of the dependency tracer
        raise TracingError(
            f"cannot find coupling groups of {type(model).__name__}: Torch-Pruning's dependency tracer failed "
            f"({type(err).__name__}: {err}). If the model runs on these example inputs, the tracer does not support "
            "its topology and it cannot be pruned structurally; unstructured pruning (--method magnitude, han or "
            "nm) still works. If it does not run on them, fix the input shapes (--input-shape)."
        ) from err
    return dg, returned, getattr(dg, UNMAPPED, {})


UNMAPPED = "decomp_unmapped"  # attribute of a Torch-Pruning graph: reshape op module id -> why


def _guard_index_mapping(name: str, what: str) -> None:
    """Make Torch-Pruning note, not raise, a reshape or concat whose channel mapping it cannot work out (a
    channel shuffle's view to (batch, groups, channels / groups, ...) gives it a channel count of 0 and it
    divides by it; in a deep Swin its channel inference gives up before a concat and it adds None). Its
    `update_index_mapping` runs on every `build_dependency` and `get_pruning_group` and would end each of
    them; guarded, the op is noted on the graph (`UNMAPPED`) and `find_groups` leaves out the groups whose
    channels pass through it, instead of mapping them as if it kept channels in place. Installed once per
    function; a mapping that works is untouched."""
    original = getattr(tp_index_mapping, name)
    if getattr(original, "decomp_guard", False):
        return

    def guarded(graph, node) -> None:
        try:
            original(graph, node)
        except Exception as err:  # noqa: BLE001 - its mapping of this one op failed
            graph.__dict__.setdefault(UNMAPPED, {})[id(node.module)] = (
                f"its channels pass through a {what} ({node.name}) whose channel mapping Torch-Pruning cannot "
                f"work out ({type(err).__name__}: {err})"
            )

    guarded.decomp_guard = True
    setattr(tp_index_mapping, name, guarded)


# Torch-Pruning's channel inference giving up, printed on every group of a deep model: where that matters the op
# is noted (see _guard_index_mapping) and the groups through it left out with the reason
warnings.filterwarnings("ignore", message="Maximum recursive depth reached", category=UserWarning)
_guard_index_mapping("update_reshape_index_mapping", "reshape, e.g. a channel shuffle,")
_guard_index_mapping("update_concat_index_mapping", "concat")


def _tp_groups(dg: tp.DependencyGraph, roots: tuple[type, ...], claimed: set[int], bounds: Bounds):
    """(root layer, Torch-Pruning group, None) per root layer not yet in an earlier group, or
    (root layer, None, error) where Torch-Pruning's index mapping fails on the topology (it raises
    from inside; its own `get_all_groups` would end the whole enumeration there) or its enumeration
    runs past the group's time bound (`GroupLimit`). Layers in `claimed` (an attention module's
    query, key and value, pruned by whole heads) are not enumerated: their groups are replaced anyway,
    and the index maps of rotary embeddings make Torch-Pruning's enumeration of them explode."""
    done: set[int] = set(claimed)
    for module in list(dg.module2node):
        if not isinstance(module, roots) or id(module) in done or module in dg.IGNORED_LAYERS_IN_TRACING:
            continue
        pruner = dg.get_pruner_of_module(module)
        width = pruner.get_out_channels(module) if pruner is not None else None
        if width is None:
            continue
        try:
            with bounds.group():
                group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
        except GroupLimit as limit:  # without its traceback, whose frames hold what the enumeration built
            done.add(id(module))
            yield module, None, limit.with_traceback(None)
            continue
        except Exception as err:  # noqa: BLE001 - Torch-Pruning's index mapping failed on this group
            done.add(id(module))
            yield module, None, err.with_traceback(None)
            continue
        done.update(id(item.dep.target.module) for item in group if dg.is_out_channel_pruning_fn(item.dep.handler))
        yield module, group, None


def _slices(dg: tp.DependencyGraph, items, channels: int, names: dict[int, str]) -> tuple[int, str | None]:
    """Equal slices the group's channels fall into (grouped convolutions, GroupNorm groups, attention
    heads): a removal takes the same positions from each. Or why the group cannot be pruned exactly."""
    slices = 1
    for target, side, item in items:
        idxs = [int(i) for i in item.idxs]
        width = dg.get_out_channels(item.dep.target) if side == "out" else dg.get_in_channels(item.dep.target)
        name = names.get(id(target), type(target).__name__)
        if width is not None and idxs and max(idxs) >= width:
            return 0, (
                f"Torch-Pruning maps its {channels} channels onto {side}put channel {max(idxs)} of {name}, "
                f"which has {width}: an index mapping it gets wrong here"
            )
        if isinstance(target, nn.RNNBase):
            return 0, f"its channels reach recurrent layer {name}; decomp does not prune LSTM, GRU or RNN layers"
        blocks = _blocks(target)
        if blocks is not None:
            count, unit = blocks
            if width != channels or sorted(idxs) != list(range(channels)):
                return 0, (
                    f"its channels reach {name} ({count} {unit} over {width} channels) through a reshape or "
                    f"concat; decomp keeps the {unit} equal only where the group's channels are that layer's channels"
                )
            slices = math.lcm(slices, count)
        slices = math.lcm(slices, _conv_slices(target))
    if channels % slices:
        return 0, f"its {channels} channels do not split into {slices} equal slices"
    return slices, None


def _closure(dg: tp.DependencyGraph, root: nn.Module, channels: int, slices: int) -> tuple[int, str | None]:
    """Slices implied by the channels Torch-Pruning removes along with channel 0 of the root layer: a
    chunk or split whose parts meet again (a gate, a layer called on each part) ties channel i of every
    part together; a removal then keeps the same positions in each part, as in grouped convolutions."""
    pruner = dg.get_pruner_of_module(root)
    try:
        group = dg.get_pruning_group(root, pruner.prune_out_channels, [0])
    except Exception as err:  # noqa: BLE001 - Torch-Pruning's index mapping failed on this group
        return 0, f"Torch-Pruning cannot follow its channels ({type(err).__name__}: {err})"
    own = (item for item in group if item.dep.target.module is root and dg.is_out_channel_pruning_fn(item.dep.handler))
    removed = sorted({int(i) for item in own for i in item.idxs})
    if removed in ([], [0]):
        return slices, None
    parts = len(removed)
    if channels % parts == 0 and removed == list(range(0, channels, channels // parts)):
        together = math.lcm(slices, parts)
        if channels % together:
            return 0, f"its {channels} channels do not split into {together} equal slices"
        return together, None
    shown = ", ".join(map(str, removed[:8])) + (", ..." if len(removed) > 8 else "")
    return 0, (
        f"Torch-Pruning removes its channels {shown} together with channel 0 (a reshape that folds channels "
        "together, or a mapping it gets wrong), which decomp cannot keep consistent"
    )


def _blocks(module) -> tuple[int, str] | None:
    """Layers whose channels form contiguous blocks that must keep equal counts: GroupNorm's groups (it
    normalises each block) and attention heads (each head is a block of the embedding)."""
    if isinstance(module, nn.GroupNorm):
        return module.num_groups, "groups"
    if isinstance(module, nn.MultiheadAttention):
        return module.num_heads, "heads"
    return None


def _head_owned(modules: dict[str, nn.Module], layouts: dict[str, HeadLayout]) -> set[int]:
    """ids of the layers whose channel groups attention head groups replace."""
    return {id(modules[f"{path}.{child}"]) for path, layout in layouts.items() for child in layout.owned}


def _add_head_groups(
    modules: dict[str, nn.Module],
    layouts: dict[str, HeadLayout],
    groups: dict[str, CouplingGroup],
    left_out: dict[str, tuple[str, set[str]]],
) -> None:
    """Replace Torch-Pruning's groups inside known attention modules by groups of whole heads: one per
    module, or one per set of modules its layout ties together (they keep the same heads)."""
    tied: dict[str, list[str]] = {}
    for path, layout in layouts.items():
        owned = {f"{path}.{child}" for child in layout.owned}
        for gid in [g.id for g in groups.values() if owned & set(g.producers)]:
            del groups[gid]
        for gid in owned & set(left_out):
            del left_out[gid]
        tied.setdefault(layout.tie(path) or path, []).append(path)
    for members in tied.values():
        layout = layouts[members[0]]
        heads = layout.heads(modules[members[0]])
        if any(layouts[p].heads(modules[p]) != heads for p in members):
            for path in members:
                left_out[path] = (
                    f"the attention modules {', '.join(members)} share per-head state but not a head count",
                    {path},
                )
            continue
        layers = tuple(
            sorted(
                {
                    (f"{p}.{name.rpartition('.')[0]}", "heads")
                    for p in members
                    for name, _, _ in layout.slices(modules[p])
                }
            )
        )
        groups[members[0]] = CouplingGroup(
            members[0], heads, layers, kind="heads", members=tuple(members) if len(members) > 1 else ()
        )


def _conv_slices(module) -> int:
    """Channel slices a grouped (not depthwise) convolution imposes."""
    if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups != module.in_channels:
        return module.groups
    return 1


def annotate_graph(graph: ModelGraph, index: GroupIndex) -> None:
    """Record on `graph` which coupling group owns each op's output channels.

    Sets node attribute `group` on every op of a group's producer layers (ops that own parameters),
    and `graph.nx.graph['groups']` to {id: {channels, kind, slices, multiple, layers}}.
    """
    owner = {path: g.id for g in index for path, side in g.layers if side in ("out", "heads")}
    for _, data in graph.nx.nodes(data=True):
        gid = owner.get(data["module"])
        if gid is not None and data["params"]:
            data["group"] = gid
    graph.nx.graph["groups"] = {
        g.id: {
            "channels": g.channels,
            "kind": g.kind,
            "slices": g.slices,
            "multiple": g.multiple,
            "layers": [list(layer) for layer in g.layers],
        }
        for g in index
    }
