"""Coupling groups for structured pruning, from Torch-Pruning's dependency graph.

A group is a set of channels that must be removed together: the output channels of a layer, the
BatchNorm/LayerNorm after it, every layer coupled through residual adds, concats and splits, and
the matching input channels of the layers that read them. Each group is named by its root layer
(the layer whose output channels it prunes first). Groups whose channels reach the model's output
(e.g. the classifier's classes) are left out: pruning them would change what the model returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from decomp.errors import TracingError
from decomp.graph import ModelGraph
from decomp.pruning.heads import head_layout
from decomp.pruning.layers import custom_pruners, custom_root_types

__all__ = ["CouplingGroup", "GroupIndex", "ROOT_TYPES", "annotate_graph", "find_groups", "pruned_side"]

ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class CouplingGroup:
    """Channels that are pruned together. `layers` lists (module path, 'out' | 'in') per coupled layer.

    `kind` is `channels` (a Torch-Pruning group) or `heads` (an attention module's heads, `channels`
    then counts heads, removed whole).
    `slices` > 1 when a grouped convolution runs through the group: its channels form `slices` equal
    slices, and a removal must take the same positions from every slice. `multiple`: the kept count
    must be a multiple of it (an attention layer's head count, so every head keeps the same width).
    """

    id: str
    channels: int
    layers: tuple[tuple[str, str], ...]
    slices: int = 1
    multiple: int = 1
    kind: str = "channels"

    @property
    def producers(self) -> tuple[str, ...]:
        """Modules whose output channels are these channels."""
        return tuple(path for path, side in self.layers if side == "out")


class GroupIndex:
    """The coupling groups of one model, with the dependency graph that found them."""

    def __init__(self, model: nn.Module, dependency_graph: tp.DependencyGraph, groups: dict[str, CouplingGroup]):
        self.model = model
        self.dg = dependency_graph
        self.groups = groups
        self._modules = dict(model.named_modules())

    def __iter__(self):
        return iter(self.groups.values())

    def __len__(self) -> int:
        return len(self.groups)

    def __contains__(self, group_id: str) -> bool:
        return group_id in self.groups

    def __getitem__(self, group_id: str) -> CouplingGroup:
        return self.groups[group_id]

    def tp_group(self, group_id: str, idxs: list[int] | None = None) -> tp.Group:
        """The Torch-Pruning group rooted at `group_id`'s layer, for the given channel indices."""
        root = self._modules[group_id]
        idxs = list(range(self.groups[group_id].channels)) if idxs is None else idxs
        return self.dg.get_pruning_group(root, self.dg.get_pruner_of_module(root).prune_out_channels, idxs)


def pruned_side(handler) -> str:
    """Which side of a layer a Torch-Pruning pruning function removes channels from: 'in' or 'out'."""
    return "in" if handler.__name__.endswith("in_channels") else "out"


def _output_modules(dg: tp.DependencyGraph, model: nn.Module) -> set[nn.Module]:
    """Layers whose output reaches the model's output through parameter-free ops only."""
    own = {id(m) for m in model.modules()}

    def reaches_end(node, seen) -> bool:
        if not node.outputs:
            return True
        for nxt in node.outputs:
            if id(nxt.module) in own or id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if reaches_end(nxt, seen):
                return True
        return False

    return {node.module for node in dg.module2node.values() if id(node.module) in own and reaches_end(node, set())}


def find_groups(model: nn.Module, example_inputs: tuple[torch.Tensor, ...], keep_output: bool = True) -> GroupIndex:
    """Find the prunable coupling groups of `model` (in eval mode) on `example_inputs`."""
    model.eval()
    names = {id(m): n for n, m in model.named_modules()}
    names.update((id(p), n) for n, p in model.named_parameters())
    inputs = tuple(example_inputs)
    try:
        dg = tp.DependencyGraph().build_dependency(
            model, example_inputs=inputs if len(inputs) > 1 else inputs[0], customized_pruners=custom_pruners(model)
        )
    except Exception as err:  # noqa: BLE001 - any failure of the dependency tracer
        raise TracingError(
            f"cannot find coupling groups of {type(model).__name__}: {type(err).__name__}: {err}. "
            "Check the example inputs; structured pruning needs a model Torch-Pruning can trace."
        ) from err
    outputs = {id(m) for m in _output_modules(dg, model)} if keep_output else set()
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    groups: dict[str, CouplingGroup] = {}
    roots = (*ROOT_TYPES, *custom_root_types())
    for group in dg.get_all_groups(root_module_types=list(roots)):
        layers: list[tuple[str, str]] = []
        for item in group:
            target, side = item.dep.target.module, pruned_side(item.dep.handler)
            if side == "out" and id(target) in outputs:
                break  # these channels are the model's output channels
            if id(target) in names and (names[id(target)], side) not in layers:
                layers.append((names[id(target)], side))
        else:
            # named by its first producer layer in definition order, so the name does not depend
            # on the order Torch-Pruning happened to visit the group
            producers = [p for p, side in layers if side == "out" and isinstance(modules.get(p), roots)]
            root = min(producers, key=order.__getitem__)
            targets = [item.dep.target.module for item in group]
            slices = max((_conv_slices(t) for t in targets), default=1)
            multiple = math.lcm(1, *(t.num_heads for t in targets if isinstance(t, nn.MultiheadAttention)))
            groups[root] = CouplingGroup(root, len(group[0].idxs), tuple(layers), slices, multiple)
    _add_head_groups(modules, groups)
    return GroupIndex(model, dg, dict(sorted(groups.items(), key=lambda kv: order[kv[0]])))


def _add_head_groups(modules: dict[str, nn.Module], groups: dict[str, CouplingGroup]) -> None:
    """Replace Torch-Pruning's groups inside known attention modules by one group of whole heads."""
    for path, module in modules.items():
        layout = head_layout(module)
        if layout is None:
            continue
        owned = {f"{path}.{child}" for child in layout.owned}
        for gid in [g.id for g in groups.values() if owned & set(g.producers)]:
            del groups[gid]
        layers = tuple(sorted({(f"{path}.{name.rpartition('.')[0]}", "heads") for name, _, _ in layout.slices(module)}))
        groups[path] = CouplingGroup(path, layout.heads(module), layers, kind="heads")


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
