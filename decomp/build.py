"""Build a costed `ModelGraph` from a model: trace it, then annotate every node with shapes and costs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import torch
from torch import fx, nn

from decomp.costs import module_path, node_macs, node_tensors, op_kind, resolve_attr
from decomp.graph import IO_OPS, ModelGraph
from decomp.specs import load_model
from decomp.tracing import trace

__all__ = ["build_graph", "graph_from_module", "graph_of_spec"]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _ParamLedger:
    """Counts each parameter once, at the first op that uses it (tied weights are not counted twice)."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def take(self, params) -> tuple[int, int]:
        count = size = 0
        for p in params:
            if isinstance(p, nn.Parameter) and id(p) not in self.seen:
                self.seen.add(id(p))
                count += p.numel()
                size += p.numel() * p.element_size()
        return count, size

    def of_node(self, node: fx.Node, gm: fx.GraphModule) -> tuple[int, int]:
        params = []
        if node.op == "call_module":
            params.extend(gm.get_submodule(node.target).parameters())
        params.extend(resolve_attr(gm, a.target) for a in node.all_input_nodes if a.op == "get_attr")
        return self.take(params)


def graph_from_module(gm: fx.GraphModule, name: str = "", tracer: str = "fx") -> ModelGraph:
    """Annotate a traced GraphModule (nodes carrying shape meta) as a `ModelGraph`.

    `get_attr` nodes (weights, buffers) fold into the ops that read them; ops whose result nobody
    uses (export's guards and asserts) are left out.
    """
    g = nx.DiGraph(name=name, tracer=tracer, level="op")
    ledger = _ParamLedger()
    out_bytes: dict[str, int] = {}
    for index, node in enumerate(gm.graph.nodes):
        if node.op == "get_attr" or (node.op != "output" and not node.users):
            continue
        tensors = node_tensors(node) if node.op != "output" else []
        shapes = [list(s) for s, _ in tensors]
        kind = op_kind(node, gm)
        params, param_bytes = ledger.of_node(node, gm)
        out_bytes[node.name] = sum(_numel_bytes(s, d) for s, d in tensors)
        g.add_node(
            node.name,
            op=node.op,
            kind=kind,
            target=str(node.target) if node.op != "call_function" else _function_name(node.target),
            module=module_path(node),
            index=index,
            shape=(shapes[0] if len(shapes) == 1 else shapes) if shapes else None,
            dtype=_dtype_name(tensors[0][1]) if tensors else None,
            out_bytes=out_bytes[node.name],
            params=params,
            param_bytes=param_bytes,
            macs=node_macs(node, gm, kind, tuple(shapes[0]) if shapes else None),
        )
        for source in node.all_input_nodes:
            if source.op == "get_attr" or source.name not in g:
                continue
            flow = out_bytes[node.name] if kind == "getitem" else out_bytes[source.name]
            attrs = g.nodes[node.name] if kind == "getitem" else g.nodes[source.name]
            g.add_edge(
                source.name, node.name, tensor=source.name, bytes=flow, shape=attrs["shape"], dtype=attrs["dtype"]
            )
    g.graph["inputs"] = [
        {"name": n, "shape": d["shape"], "dtype": d["dtype"]} for n, d in g.nodes(data=True) if d["op"] == "placeholder"
    ]
    g.graph["totals"] = {
        "params": sum(d["params"] for _, d in g.nodes(data=True)),
        "macs": sum(d["macs"] for _, d in g.nodes(data=True)),
        "activation_bytes": sum(d["out_bytes"] for _, d in g.nodes(data=True) if d["op"] not in IO_OPS),
    }
    return ModelGraph(g)


def _numel_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _function_name(target) -> str:
    if hasattr(target, "overloadpacket"):
        return str(target)  # aten.addmm.default
    module = getattr(target, "__module__", None) or ""
    return f"{module}.{getattr(target, '__name__', target)}".lstrip(".")


def build_graph(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    tracer: str = "fx",
    leaf_modules: Sequence[str | type] = (),
    name: str = "",
) -> ModelGraph:
    """Trace `model` on `example_inputs` and return its costed graph."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    gm = trace(model, inputs, tracer=tracer, leaf_modules=leaf_modules)
    graph = graph_from_module(gm, name=name or type(model).__name__, tracer=tracer)
    # parameters the traced forward never reads (e.g. auxiliary heads in eval mode)
    graph.nx.graph["unused_params"] = _ParamLedger().take(model.parameters())[0] - graph.totals.params
    return graph


def graph_of_spec(
    spec: str,
    weights: str | Path | None = None,
    input_shapes: list[tuple[int, ...]] | None = None,
    tracer: str | None = None,
    leaf_modules: Sequence[str] = (),
) -> ModelGraph:
    """Load the model a spec names and return its costed graph (the tracer defaults to what suits the spec)."""
    loaded = load_model(spec, weights=weights, input_shapes=input_shapes)
    graph = build_graph(
        loaded.module, loaded.example_inputs, tracer=tracer or loaded.tracer, leaf_modules=leaf_modules, name=spec
    )
    return graph
