"""Split a model into one `torch.fx.GraphModule` per part of a `PartitionPlan`.

The model is traced with the tracer its graph was built with (so the plan's node names are the fx
node names), the plan is validated against the graph of that same trace, and
`torch.fx.passes.split_module` cuts the GraphModule. Then every part is made self-contained: the
weights `split_module` would pass in as extra inputs (tensors read through `get_attr`, which is every
weight of a `torch.export` graph) become the part's own attributes again, so a part's inputs are
exactly the activations that cross into it.

Tensor names: model inputs keep their placeholder names, a tensor crossing between parts is named
after the fx node that makes it, and the model outputs are the flattened output leaves (named after
the nodes that make them).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
import torch.utils._pytree as pytree
from torch import fx, nn
from torch.fx.passes.split_module import split_module

from decomp.build import graph_from_module
from decomp.costs import resolve_attr
from decomp.errors import InvalidPlanError
from decomp.partition.parts import PartsLayout, PartSpec, run_local, run_parts
from decomp.partition.plan import PartitionPlan, quotient
from decomp.tracing import trace

__all__ = ["SplitModel", "split_model", "flat_outputs", "outputs_diff"]

# program.module() checks its inputs with a `_guards_fn` call nobody uses; every exported part gets
# its own input guards, so the call is dropped rather than placed in a part
_GUARDS_FN = "_guards_fn"


@dataclass
class SplitModel:
    """A model cut into parts: `modules[i]` runs `layout.parts[i]` (parts listed in an order that runs).

    The modules share weights with the model they were split from. `example_inputs` are the inputs
    the model was traced with (export uses them to capture each part)."""

    layout: PartsLayout
    modules: list[fx.GraphModule]
    plan: PartitionPlan
    example_inputs: tuple[torch.Tensor, ...]
    tracer: str = "fx"

    def __call__(self, *inputs: torch.Tensor) -> tuple[Any, ...]:
        """Run the parts one after another; returns the model's flattened outputs in layout order."""
        return run_local(self.layout, self.modules, *inputs)

    def tensors(self, *inputs: torch.Tensor) -> dict[str, Any]:
        """Every named tensor (model inputs, tensors crossing parts, outputs) for one run on `inputs`."""
        return run_parts(self.layout, self.modules, *inputs)


def flat_outputs(value: Any) -> list[torch.Tensor]:
    """A model's output as the flat list of tensors the split model returns (pytree leaf order)."""
    return [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def outputs_diff(got: Sequence[Any], expected: Sequence[Any], what: str, error: type[Exception]) -> float:
    """The largest absolute difference between two runs' flattened outputs (`what` made `got`); a different
    count or shape is an `error` saying so."""
    if len(got) != len(expected):
        raise error(f"{what} returns {len(got)} outputs, the model {len(expected)}; was it made from it?")
    diff = 0.0
    for a, b in zip(got, expected, strict=True):
        if a.shape != b.shape:
            raise error(f"{what} returns shape {tuple(a.shape)} where the model returns {tuple(b.shape)}")
        diff = max(diff, float((a.float() - b.float()).abs().max()) if a.numel() else 0.0)
    return diff


def split_model(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    plan: PartitionPlan,
    tracer: str = "fx",
    leaf_modules: Sequence[str | type] = (),
) -> SplitModel:
    """Cut `model` into the parts `plan` names; the plan must fit the graph of the same trace
    (`build_graph(model, example_inputs, tracer, leaf_modules)`). A part left holding only
    bookkeeping (sizes, tuple indexing, asserts: see `_keep_non_tensors_home`) is dropped, so the
    layout may list fewer parts than the plan."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    gm = trace(model, inputs, tracer=tracer, leaf_modules=leaf_modules)
    graph = graph_from_module(gm, name=type(model).__name__, tracer=tracer)
    plan.validate(graph)
    order = list(nx.lexicographical_topological_sort(quotient(graph, plan)))
    for node in [n for n in gm.graph.nodes if n.op == "call_module" and n.target == _GUARDS_FN and not n.users]:
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()  # e.g. the unused `c` of `n, c, h, w = x.shape`
    part_of = _place_every_node(gm, plan.part_of(), order)
    _keep_non_tensors_home(gm, part_of)
    _drop_parts_without_outputs(gm, part_of)
    top = split_module(gm, model, lambda node: part_of[node.name], keep_original_node_name=True, tuple_return=True)
    weights = {n.name: n.target for n in gm.graph.nodes if n.op == "get_attr"}
    modules, specs = [], []
    for k in [k for k in order if k in set(part_of.values())]:
        part = getattr(top, f"submod_{k}")
        _own_weights(part, gm, weights)
        modules.append(part)
        device = plan.devices[k] if plan.devices else ""
        specs.append(PartSpec(f"part_{k}", _input_names(part), _output_names(part), device))
    placeholders = tuple(n.name for n in gm.graph.nodes if n.op == "placeholder")
    layout = PartsLayout(placeholders, _model_outputs(gm, weights), tuple(specs))
    _copy_mutated_inputs(layout, modules, inputs)
    return SplitModel(layout, modules, plan, inputs, tracer)


def _place_every_node(gm: fx.GraphModule, part: dict[str, int], order: list[int]) -> dict[str, int]:
    """Part of every op `split_module` will place: the plan's, and for ops the graph leaves out (ops
    nobody uses, such as export's shape asserts) the latest part (in run order) among their inputs,
    where a model input counts as the first part that reads it."""
    rank = {k: i for i, k in enumerate(order)}
    first_reader: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.name in part:
            for source in node.all_input_nodes:
                if source.op == "placeholder":
                    first_reader[source.name] = min(
                        first_reader.get(source.name, order[-1]), part[node.name], key=rank.get
                    )
    placed = dict(part)
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "get_attr", "output") or node.name in placed:
            continue
        sources = [placed.get(s.name, first_reader.get(s.name)) for s in node.all_input_nodes]
        placed[node.name] = max((s for s in sources if s is not None), key=rank.get, default=order[0])
    return placed


def _makes_tensor(node: fx.Node) -> bool:
    if "val" in node.meta:  # torch.export graphs
        return isinstance(node.meta["val"], torch.Tensor)
    kind = node.meta.get("type")  # fx graphs (ShapeProp)
    return isinstance(kind, type) and issubclass(kind, torch.Tensor)


def _keep_non_tensors_home(gm: fx.GraphModule, placed: dict[str, int]) -> None:
    """Only tensors cross parts. A `getitem` that takes a tensor out of a tuple (split, chunk, a module
    returning several values) moves to the part that makes the tuple; other values that are not
    tensors (sizes, ints, shape arithmetic) are recomputed in every part that reads them, from the
    tensors they come from. Neither adds an edge against run order, so no cycle appears."""
    nodes = list(gm.graph.nodes)
    for node in nodes:
        source = node.args[0] if node.op == "call_function" and node.target is operator.getitem else None
        if isinstance(source, fx.Node) and source.name in placed and not _makes_tensor(source):
            placed[node.name] = placed[source.name]
    for node in reversed(nodes):
        if node.name not in placed or _makes_tensor(node):
            continue
        readers: dict[int, list[fx.Node]] = {}
        for user in node.users:
            if user.op != "output" and placed[user.name] != placed[node.name]:
                readers.setdefault(placed[user.name], []).append(user)
        for part, users in readers.items():
            with gm.graph.inserting_after(node):
                copy = gm.graph.node_copy(node)
            placed[copy.name] = part
            for user in users:
                user.replace_input_with(node, copy)
        if readers and not node.users and not node.is_impure():
            gm.graph.erase_node(node)
            del placed[node.name]


def _drop_parts_without_outputs(gm: fx.GraphModule, placed: dict[str, int]) -> None:
    """A part none of whose values leaves it (left with only checks such as `torch._assert` on sizes
    once the sizes moved to their readers) computes nothing anyone reads: drop its ops. Each exported
    part checks its own input shapes, so no shape check is lost."""
    export = {
        n.name for n in gm.graph.nodes for u in n.users if u.op == "output" or placed.get(u.name) != placed.get(n.name)
    }
    useful = {placed[n] for n in export if n in placed}
    for node in reversed(list(gm.graph.nodes)):
        if node.name in placed and placed[node.name] not in useful:
            gm.graph.erase_node(node)
            del placed[node.name]


def _own_weights(part: fx.GraphModule, gm: fx.GraphModule, weights: dict[str, str]) -> None:
    """Turn the placeholders `split_module` made for weights back into `get_attr`s of the part's own
    attributes (same qualified names as in the model), so the part carries its weights."""
    changed = False
    for node in [n for n in part.graph.nodes if n.op == "placeholder" and n.target in weights]:
        target = weights[node.target]
        _set_attr(part, target, resolve_attr(gm, target))
        with part.graph.inserting_before(node):
            attr = part.graph.get_attr(target)
        attr.meta = dict(node.meta)
        node.replace_all_uses_with(attr)
        part.graph.erase_node(node)
        changed = True
    if changed:
        part.graph.lint()
        part.recompile()


def _copy_mutated_inputs(layout: PartsLayout, modules: list[fx.GraphModule], inputs: tuple[Any, ...]) -> None:
    """Make every part copy the inputs it changes in place (an in-place ReLU as its first op): a tensor
    crossing parts may be read by other parts too, in any order, or arrive read-only from another
    process. Found by running each part once on copies and watching their version counters."""
    env: dict[str, Any] = dict(zip(layout.inputs, inputs, strict=True))
    with torch.no_grad():
        for spec, module in zip(layout.parts, modules, strict=True):
            args = [env[n] for n in spec.inputs]
            _copy_if_mutated(module, args)
            env.update(zip(spec.outputs, module(*args), strict=True))


def _copy_if_mutated(part: fx.GraphModule, args: list[Any]) -> None:
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    before = [c._version if isinstance(c, torch.Tensor) else 0 for c in copies]
    part(*copies)
    placeholders = [n for n in part.graph.nodes if n.op == "placeholder"]
    mutated = [
        p
        for p, c, v in zip(placeholders, copies, before, strict=True)
        if isinstance(c, torch.Tensor) and c._version != v
    ]
    for node in mutated:
        with part.graph.inserting_after(placeholders[-1]):
            copy = part.graph.call_method("clone", (node,))
        copy.meta = dict(node.meta)
        node.replace_all_uses_with(copy, delete_user_cb=lambda user, copy=copy: user is not copy)
    if mutated:
        part.graph.lint()
        part.recompile()


def _set_attr(root: nn.Module, target: str, value: Any) -> None:
    *path, name = target.split(".")
    owner = root
    for atom in path:
        if not hasattr(owner, atom):
            owner.add_module(atom, nn.Module())
        owner = getattr(owner, atom)
    if isinstance(value, nn.Parameter):
        owner.register_parameter(name, value)
    elif isinstance(value, torch.Tensor):
        owner.register_buffer(name, value)
    else:
        setattr(owner, name, value)


def _input_names(part: fx.GraphModule) -> tuple[str, ...]:
    # split_module names each placeholder after the node that made the tensor (its target keeps the
    # name even where the graph had to rename the node)
    return tuple(str(n.target) for n in part.graph.nodes if n.op == "placeholder")


def _output_names(part: fx.GraphModule) -> tuple[str, ...]:
    (out,) = [n for n in part.graph.nodes if n.op == "output"]
    return tuple(n.name for n in out.args[0])  # keep_original_node_name: the producing node's name


def _model_outputs(gm: fx.GraphModule, weights: dict[str, str]) -> tuple[str, ...]:
    (out,) = [n for n in gm.graph.nodes if n.op == "output"]
    leaves = [leaf for leaf in pytree.tree_leaves(out.args[0]) if isinstance(leaf, fx.Node)]
    constant = [leaf.name for leaf in leaves if leaf.name in weights]
    if constant:
        raise InvalidPlanError(
            f"the model returns a weight ({', '.join(constant)}) as an output; no part computes it, so it "
            "cannot be split. Return an op's result instead."
        )
    return tuple(leaf.name for leaf in leaves)
