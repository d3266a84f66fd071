"""`PartitionPlan`: which part of a model graph runs where, as a frozen record with a JSON round trip.

A plan assigns every compute node of a `ModelGraph` (ops, or blocks of a coarsened graph) to a part
0..K-1 and may give each part a device hint. Two modes:

- `pipeline`: each part is a contiguous run of the graph's topological order (cut points), part k
  before part k+1. Built with `PartitionPlan.pipeline`.
- `dag`: any assignment whose quotient graph (parts as nodes, an edge where a tensor crosses) is
  acyclic, so parallel branches can run side by side.

`repair` turns an assignment whose parts form a cycle into a valid one close to it; `expand` maps a
plan made on a coarsened (block) graph onto the op graph it was coarsened from.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from decomp.errors import InvalidPlanError
from decomp.graph import ModelGraph

__all__ = ["MODES", "PartitionPlan", "crossings", "expand", "quotient", "repair", "tensor_flows"]

FORMAT = "decomp.partition_plan/1"
MODES = ("pipeline", "dag")


@dataclass(frozen=True)
class PartitionPlan:
    """`assignment`: (node, part) pairs in the graph's topological order; `devices`: a hint per part
    ('cpu', 'cuda', 'cuda:1', ...) or empty for "wherever the runtime puts it"."""

    assignment: tuple[tuple[str, int], ...]
    mode: str = "dag"
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "assignment", tuple((str(n), int(p)) for n, p in self.assignment))
        object.__setattr__(self, "devices", tuple(self.devices))
        if self.mode not in MODES:
            raise InvalidPlanError(f"unknown partition mode {self.mode!r}; choose one of {', '.join(MODES)}")
        nodes = [n for n, _ in self.assignment]
        if len(set(nodes)) != len(nodes):
            twice = sorted({n for n in nodes if nodes.count(n) > 1})
            raise InvalidPlanError(f"node(s) assigned more than once: {', '.join(twice[:5])}")
        parts = sorted({p for _, p in self.assignment})
        if parts != list(range(len(parts))):
            raise InvalidPlanError(
                f"parts must be numbered 0..K-1 with none empty, got {parts[:10]}; renumber them "
                "(PartitionPlan.from_assignment does)"
            )
        if self.devices and len(self.devices) != len(parts):
            raise InvalidPlanError(f"{len(self.devices)} device hints for {len(parts)} parts; give one per part")

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_assignment(
        cls,
        assignment: Mapping[str, int],
        mode: str = "dag",
        devices: Sequence[str] = (),
        graph: ModelGraph | None = None,
    ) -> PartitionPlan:
        """A plan from node -> part labels (any integers; renumbered 0..K-1 by first appearance along
        the graph's topological order when `graph` is given, else by label)."""
        if graph is not None:
            order = [n for n in graph.compute_nodes() if n in assignment]
            order += sorted(set(assignment) - set(order))  # unknown nodes stay, so validate() can name them
        else:
            order = sorted(assignment, key=lambda n: (assignment[n], n))
        labels: dict[int, int] = {}
        for n in order:
            labels.setdefault(assignment[n], len(labels))
        return cls(tuple((n, labels[assignment[n]]) for n in order), mode, tuple(devices))

    @classmethod
    def pipeline(cls, graph: ModelGraph, cuts: Sequence[int | str], devices: Sequence[str] = ()) -> PartitionPlan:
        """Cut the graph's compute nodes (topological order) before each cut: a position in
        `graph.compute_nodes()` or the name of the first node of a new part."""
        nodes = graph.compute_nodes()
        where = {n: i for i, n in enumerate(nodes)}
        positions = []
        for cut in cuts:
            if isinstance(cut, str):
                if cut not in where:
                    raise InvalidPlanError(f"cut at {cut!r}: the graph has no compute node of that name")
                cut = where[cut]
            if not 0 < cut < len(nodes):
                raise InvalidPlanError(
                    f"cut position {cut} is outside 1..{len(nodes) - 1} (the graph has {len(nodes)} compute nodes)"
                )
            positions.append(cut)
        if positions != sorted(set(positions)):
            raise InvalidPlanError(f"cut positions must be increasing and distinct, got {positions}")
        bounds = [0, *positions, len(nodes)]
        assignment = tuple((n, k) for k in range(len(bounds) - 1) for n in nodes[bounds[k] : bounds[k + 1]])
        return cls(assignment, "pipeline", tuple(devices))

    # -- queries -----------------------------------------------------------------------------------
    @property
    def parts(self) -> int:
        return 1 + max((p for _, p in self.assignment), default=-1)

    def part_of(self) -> dict[str, int]:
        return dict(self.assignment)

    def members(self) -> list[list[str]]:
        """Nodes of each part, in assignment order."""
        out: list[list[str]] = [[] for _ in range(self.parts)]
        for n, p in self.assignment:
            out[p].append(n)
        return out

    def cuts(self, graph: ModelGraph) -> list[int]:
        """Cut positions along `graph.compute_nodes()` (pipeline plans)."""
        part = self.part_of()
        nodes = graph.compute_nodes()
        return [i for i in range(1, len(nodes)) if part[nodes[i]] != part[nodes[i - 1]]]

    # -- validation --------------------------------------------------------------------------------
    def validate(self, graph: ModelGraph) -> PartitionPlan:
        """Raise `InvalidPlanError` naming the problem unless the plan fits `graph`; returns the plan."""
        nodes = graph.compute_nodes()
        part = self.part_of()
        unknown = [n for n in part if n not in graph or graph[n]["op"] in ("placeholder", "output")]
        if unknown:
            raise InvalidPlanError(
                f"the plan assigns {len(unknown)} node(s) the graph has no compute node for "
                f"({', '.join(unknown[:5])}); was it made for another model, pruning or coarsening level "
                f"({graph.level})?"
            )
        missing = [n for n in nodes if n not in part]
        if missing:
            raise InvalidPlanError(
                f"{len(missing)} compute node(s) have no part ({', '.join(missing[:5])}); assign every node"
            )
        if self.mode == "pipeline":
            seen = [part[n] for n in nodes]  # non-decreasing, with every part present: contiguous runs
            if any(b < a for a, b in zip(seen, seen[1:], strict=False)):
                raise InvalidPlanError(
                    "a pipeline plan must cut the topological order into contiguous runs, part 0 first; "
                    "use PartitionPlan.pipeline(graph, cuts) or mode='dag'"
                )
            return self  # every edge runs forward in the order, so from a part to the same or a later one: no cycle
        cycle = _cycle(quotient(graph, self))
        if cycle:
            raise InvalidPlanError(
                f"the parts form a cycle ({' -> '.join(map(str, cycle))}): no order runs them; "
                "fix the assignment or call decomp.partition.repair(graph, assignment)"
            )
        return self

    # -- JSON --------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "mode": self.mode,
            "devices": list(self.devices),
            "assignment": {n: p for n, p in self.assignment},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartitionPlan:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InvalidPlanError(f"not a partition plan of format {FORMAT} (format is {fmt!r})")
        unknown = sorted(set(data) - {"format", "mode", "devices", "assignment"})
        if unknown:
            raise InvalidPlanError(
                f"unknown key(s) {', '.join(unknown)} in partition plan; valid keys: format, mode, devices, assignment"
            )
        assignment = data.get("assignment")
        if not isinstance(assignment, dict):
            raise InvalidPlanError("partition plan 'assignment' must map node names to part numbers")
        return cls(tuple(assignment.items()), data.get("mode", "dag"), tuple(data.get("devices", ())))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    @classmethod
    def loads(cls, text: str) -> PartitionPlan:
        return cls.from_json(json.loads(text))


def tensor_flows(graph: ModelGraph) -> tuple[tuple[str, str, Hashable, int], ...]:
    """Every edge u -> v as (u, v, tensor, bytes); `tensor` names what flows, so that one tensor read by
    several consumers is recognised as one. It is the producer on an op edge; the producer and the consumer
    on an edge into a `getitem` (each item of a multi-output op is a tensor of its own, and the edge carries
    the item's bytes); the producer and its list of tensors on a block edge (a block edge sums the bytes of
    the tensors it lists, so two edges out of one block are one transfer only when they list the same tensors)."""
    return graph.derived("tensor_flows", _tensor_flows)


def _tensor_flows(graph: ModelGraph) -> tuple[tuple[str, str, Hashable, int], ...]:
    out = []
    for u, v, data in graph.nx.edges(data=True):
        listed = data.get("tensor")
        if isinstance(listed, list):
            tensor: Hashable = (u, tuple(listed))
        elif graph[v].get("kind") == "getitem":
            tensor = (u, v)
        else:
            tensor = (u,)
        out.append((u, v, tensor, data.get("bytes", 0)))
    return tuple(out)


def crossings(graph: ModelGraph, plan: PartitionPlan) -> list[tuple[str, int | None, int, int]]:
    """Tensors that reach a part from outside it, as (producer, producer's part, receiving part, bytes): one
    row per tensor and receiving part, however many of the part's nodes read it. The producer's part is
    None for a model input. Edges into the graph's output (model outputs) are not crossings."""
    part = plan.part_of()
    out = []
    seen: set[tuple[Hashable, int]] = set()
    for u, v, tensor, size in tensor_flows(graph):
        if v not in part:
            continue
        if u in part:
            source: int | None = part[u]
        elif graph[u]["op"] == "placeholder":
            source = None
        else:
            continue  # a node the plan leaves out; validate() names it
        if source == part[v] or (tensor, part[v]) in seen:
            continue
        seen.add((tensor, part[v]))
        out.append((u, source, part[v], size))
    return out


def quotient(graph: ModelGraph, plan: PartitionPlan) -> nx.DiGraph:
    """Parts as nodes; an edge p -> q with attribute `bytes` where tensors made in p are read in q
    (each tensor counted once per receiving part, see `crossings`)."""
    q = nx.DiGraph()
    q.add_nodes_from(range(plan.parts))
    for _, source, target, size in crossings(graph, plan):
        if source is None:
            continue
        if q.has_edge(source, target):
            q.edges[source, target]["bytes"] += size
        else:
            q.add_edge(source, target, bytes=size)
    return q


def _cycle(q: nx.DiGraph) -> list[int]:
    try:
        edges = nx.find_cycle(q)
    except nx.NetworkXNoCycle:
        return []
    return [u for u, _ in edges] + [edges[0][0]]


def repair(graph: ModelGraph, assignment: Mapping[str, int], mode: str = "dag") -> PartitionPlan:
    """A valid plan near `assignment`: the one that keeps the most parts and, among those, moves the
    fewest nodes, out of a few greedy repairs. Each repair puts the parts in an order (by the first,
    mean or last topological position of their nodes) and then either walks the nodes forward, moving
    a node whose part comes before one of its inputs' parts into the latest of those, or backward,
    moving a node whose part comes after one of its readers' parts into the earliest of those.
    Tensors then only flow forward in part order, so the quotient graph is acyclic. Nodes the
    assignment leaves out join their neighbours' part. `mode='pipeline'` also makes parts contiguous."""
    nodes = graph.compute_nodes()
    unknown = sorted(set(assignment) - set(nodes))
    if unknown:
        raise InvalidPlanError(f"assignment names node(s) the graph has no compute node for: {', '.join(unknown[:5])}")
    if not assignment:
        raise InvalidPlanError("the assignment is empty; assign the graph's compute nodes to parts")
    position = {n: i for i, n in enumerate(nodes)}
    members: dict[int, list[int]] = {}
    for n, p in assignment.items():
        members.setdefault(p, []).append(position[n])
    orders = [
        sorted(members, key=lambda p, key=key: (key(members[p]), p)) for key in (min, lambda m: sum(m) / len(m), max)
    ]
    best: tuple[tuple[int, int], dict[str, int]] | None = None
    for order in orders:
        rank = {p: r for r, p in enumerate(order)}
        for forward in (True, False):
            fixed = _walk(graph, nodes, {n: rank[p] for n, p in assignment.items()}, forward)
            if mode == "pipeline":  # a part never resumes after a later one started
                high = 0
                for n in nodes:
                    high = fixed[n] = max(high, fixed[n])
            moved = sum(fixed[n] != rank[p] for n, p in assignment.items())
            score = (-len(set(fixed.values())), moved)
            if best is None or score < best[0]:
                best = score, fixed
    return PartitionPlan.from_assignment(best[1], mode, graph=graph).validate(graph)


def _walk(graph: ModelGraph, nodes: list[str], rank: dict[str, int], forward: bool) -> dict[str, int]:
    """One greedy pass: forward, no node before its inputs' parts; backward, none after its readers'."""
    fixed: dict[str, int] = {}
    neighbours = graph.nx.predecessors if forward else graph.nx.successors
    last = max(rank.values())
    for n in nodes if forward else reversed(nodes):
        bounds = [fixed[u] for u in neighbours(n) if u in fixed]
        if forward:
            fixed[n] = max([rank.get(n, 0), *bounds]) if n in rank else max(bounds, default=0)
        else:
            fixed[n] = min([rank[n], *bounds]) if n in rank else min(bounds, default=last)
    return fixed


def expand(plan: PartitionPlan, blocks: ModelGraph) -> PartitionPlan:
    """A plan made on a coarsened graph, as a plan over the op graph it came from (each op in its
    block's part)."""
    if blocks.level != "block":
        raise InvalidPlanError(
            f"expand needs the block graph the plan was made on, got a graph at level {blocks.level}"
        )
    assignment = {}
    for block, p in plan.assignment:
        if block not in blocks:
            raise InvalidPlanError(f"the plan names block {block!r}, which the block graph does not have")
        for op in blocks[block]["members"]:
            assignment[op] = p
    return PartitionPlan(tuple(assignment.items()), plan.mode, plan.devices)
