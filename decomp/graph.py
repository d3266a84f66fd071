"""`ModelGraph`: a costed, JSON-round-trippable wrapper over `networkx.DiGraph`.

Schema (version 1). Node id: the fx node name (op graphs) or the block name (block graphs).

Node attributes
  op            fx op: placeholder | call_module | call_function | call_method | output; `block` for blocks
  kind          what it does: module class (`Conv2d`), function or ATen op name (`add`, `addmm`), or `block`
  target        fx target as text (module path, function, ATen overload)
  module        dotted path of the module the op belongs to ('' at the root)
  index         position in a topological order (the fx graph order)
  shape, dtype  output tensor shape (list; list of lists for several outputs; null for non-tensors) and dtype
  out_bytes     bytes of the output tensor(s); for a block: bytes of the tensors it sends to other blocks
  params        parameters owned by the op (each shared parameter counted once, at its first use)
  param_bytes   bytes of those parameters
  macs          multiply-accumulates of one forward pass (see decomp.costs)
  group         (optional, set by decomp.pruning.annotate_graph) the coupling group whose channels
                this op's parameters produce; graph attribute `groups` then describes every group
  blocks only:  members (op names, topological order), n_ops, activation_bytes (outputs of the members)

Edge attributes (u -> v: v reads a tensor that u produced)
  tensor        name of the producing op(s) (list for block edges), shape, dtype (op graphs)
  bytes         bytes that flow; a tensor read by several ops of one block counts once

Graph attributes: name, tracer, level (`op` or `block`), inputs [{name, shape, dtype}],
totals {params, macs, activation_bytes} (params: those the traced forward reads; activation_bytes: every
op output, inputs excluded), unused_params (parameters of the model the forward never reads), and
for block graphs `depth` and `block_of` (op -> block).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import networkx as nx

from decomp.errors import GraphError

__all__ = ["IO_OPS", "ModelGraph", "Totals", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1
T = TypeVar("T")
IO_OPS = ("placeholder", "output")  # graph inputs and the output: never merged into blocks


@dataclass(frozen=True)
class Totals:
    """Whole-model costs."""

    params: int
    macs: int
    activation_bytes: int


class ModelGraph:
    """A costed model graph; `nx` is the underlying `networkx.DiGraph` (see the module docstring for its schema).

    Its nodes, edges and their costs are fixed once built (build a new `networkx.DiGraph` to change them);
    annotations such as measured `seconds` may be added. What is derived from the structure (the order,
    tensor flows, op signatures) is computed once per graph (`derived`), so pricing thousands of plans of
    one graph does not redo it."""

    def __init__(self, graph: nx.DiGraph) -> None:
        if not nx.is_directed_acyclic_graph(graph):
            raise GraphError("a ModelGraph must be a directed acyclic graph")
        self.nx = graph
        self._attrs: dict[str, dict[str, Any]] = dict(graph.nodes(data=True))  # the same dicts, one lookup
        self._derived: dict[str, Any] = {}

    def derived(self, key: str, compute: Callable[[ModelGraph], T]) -> T:
        """`compute(self)`, computed on the first call for `key` and kept; `compute` must read only the
        graph's structure and costs (not annotations that may be added later) and return a value its
        callers do not change."""
        if key not in self._derived:
            self._derived[key] = compute(self)
        return self._derived[key]

    @property
    def name(self) -> str:
        return self.nx.graph.get("name", "")

    @property
    def level(self) -> str:
        return self.nx.graph.get("level", "op")

    @property
    def totals(self) -> Totals:
        return Totals(**self.nx.graph["totals"])

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def __iter__(self):
        return iter(self.order())

    def __contains__(self, node: str) -> bool:
        return node in self.nx

    def __getitem__(self, node: str) -> dict[str, Any]:
        return self._attrs[node]

    def order(self) -> list[str]:
        """Node ids in topological order (the traced program order)."""
        return list(self.derived("order", lambda g: tuple(sorted(g.nx.nodes, key=lambda n: g[n]["index"]))))

    def compute_nodes(self) -> list[str]:
        """Node ids in topological order, without the graph's inputs and output."""
        return list(self.derived("compute_nodes", lambda g: tuple(n for n in g.order() if g[n]["op"] not in IO_OPS)))

    def sum(self, attribute: str) -> int:
        return sum(d.get(attribute, 0) for _, d in self.nx.nodes(data=True))

    def to_json(self) -> dict[str, Any]:
        data = nx.node_link_data(self.nx, edges="edges")
        data["schema_version"] = SCHEMA_VERSION
        data["totals"] = self.totals_dict()  # a copy at top level for readers of the file; ignored on load
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelGraph:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise GraphError(
                f"graph JSON has schema_version {version!r}; this decomp reads version {SCHEMA_VERSION}. "
                "Rebuild it with `decomp graph MODEL --json PATH`."
            )
        body = {k: v for k, v in data.items() if k not in ("schema_version", "totals")}
        return cls(nx.node_link_graph(body, edges="edges"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ModelGraph:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise GraphError(f"cannot read graph JSON {path}: {err}") from None
        return cls.from_json(data)

    def totals_dict(self) -> dict[str, int]:
        return asdict(self.totals)
