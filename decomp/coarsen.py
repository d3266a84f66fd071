"""Coarsen an op graph into blocks so searches work on tens of blocks instead of thousands of ops.

Ops are keyed by their module path cut to `depth` components; a block is a run of consecutive ops
(in topological order) with one key. Because every block is a contiguous run of a topological
order, the block graph is acyclic. For a target block count, the shallowest depth that gives at
least that many blocks is taken and then the adjacent pair of blocks with the least MACs is merged
until the count is reached. Inputs and the output stay blocks of their own and are not counted.
"""

from __future__ import annotations

import networkx as nx

from decomp.errors import GraphError
from decomp.graph import IO_OPS, ModelGraph

__all__ = ["coarsen", "max_depth"]


def max_depth(graph: ModelGraph) -> int:
    """The deepest module nesting among the graph's ops."""
    return max((len(d["module"].split(".")) for _, d in graph.nx.nodes(data=True) if d["module"]), default=0)


def _runs(graph: ModelGraph, depth: int) -> list[list[str]]:
    runs: list[list[str]] = []
    last_key: object = None
    for name in graph.order():
        data = graph[name]
        if data["op"] in IO_OPS:
            key: object = (data["op"], name)
        else:
            key = ".".join(data["module"].split(".")[:depth]) if data["module"] else ""
        if key != last_key or data["op"] in IO_OPS:
            runs.append([])
        runs[-1].append(name)
        last_key = key
    return runs


def _merge_to(graph: ModelGraph, runs: list[list[str]], blocks: int) -> list[list[str]]:
    macs = [sum(graph[n]["macs"] for n in run) for run in runs]
    while _compute_count(graph, runs) > blocks:
        pairs = [
            (macs[i] + macs[i + 1], i)
            for i in range(len(runs) - 1)
            if graph[runs[i][0]]["op"] not in IO_OPS and graph[runs[i + 1][0]]["op"] not in IO_OPS
        ]
        if not pairs:
            break
        _, i = min(pairs)
        runs[i : i + 2] = [runs[i] + runs[i + 1]]
        macs[i : i + 2] = [macs[i] + macs[i + 1]]
    return runs


def _block_name(graph: ModelGraph, run: list[str], depth: int, taken: set[str]) -> str:
    first = graph[run[0]]
    if first["op"] in IO_OPS:
        base = run[0]
    else:
        prefixes = [graph[n]["module"].split(".")[:depth] for n in run]
        common = []
        for parts in zip(*prefixes, strict=False):  # stops at the shortest path
            if len(set(parts)) > 1:
                break
            common.append(parts[0])
        base = ".".join(common) or run[0]
    name, k = base, 2
    while name in taken:
        name, k = f"{base}#{k}", k + 1
    taken.add(name)
    return name


def coarsen(graph: ModelGraph, depth: int | None = None, blocks: int | None = None) -> ModelGraph:
    """Return the block graph of `graph`; give exactly one of `depth` (>= 1) or `blocks` (>= 1)."""
    if graph.level != "op":
        raise GraphError("coarsen an op-level graph, not a block graph")
    if (depth is None) == (blocks is None):
        raise GraphError("give exactly one of depth or blocks")
    deepest = max(max_depth(graph), 1)
    if depth is not None:
        if depth < 1:
            raise GraphError(f"depth must be >= 1, got {depth}")
        runs = _runs(graph, depth)
    else:
        if blocks < 1:
            raise GraphError(f"blocks must be >= 1, got {blocks}")
        depth = 1
        runs = _runs(graph, depth)
        while _compute_count(graph, runs) < blocks and depth < deepest:
            depth += 1
            runs = _runs(graph, depth)
        runs = _merge_to(graph, runs, blocks)
    return _quotient(graph, runs, depth)


def _compute_count(graph: ModelGraph, runs: list[list[str]]) -> int:
    return sum(1 for run in runs if graph[run[0]]["op"] not in IO_OPS)


def _quotient(graph: ModelGraph, runs: list[list[str]], depth: int) -> ModelGraph:
    g = nx.DiGraph(**{k: v for k, v in graph.nx.graph.items()})
    g.graph.update(level="block", depth=depth)
    block_of: dict[str, str] = {}
    taken: set[str] = set()
    for index, run in enumerate(runs):
        name = _block_name(graph, run, depth, taken)
        block_of.update((n, name) for n in run)
        first = graph[run[0]]
        fixed = first["op"] in IO_OPS
        g.add_node(
            name,
            op=first["op"] if fixed else "block",
            kind=first["kind"] if fixed else "block",
            target=first["target"] if fixed else name,
            module=name if not fixed else "",
            index=index,
            shape=first["shape"] if fixed else None,
            dtype=first["dtype"] if fixed else None,
            members=list(run),
            n_ops=len(run),
            params=sum(graph[n]["params"] for n in run),
            param_bytes=sum(graph[n]["param_bytes"] for n in run),
            macs=sum(graph[n]["macs"] for n in run),
            activation_bytes=0 if fixed else sum(graph[n]["out_bytes"] for n in run),
            out_bytes=0,
        )
    sent: set[tuple[str, str]] = set()
    for u, v, data in graph.nx.edges(data=True):
        bu, bv = block_of[u], block_of[v]
        if bu == bv:
            continue
        if not g.has_edge(bu, bv):
            g.add_edge(bu, bv, tensor=[], bytes=0)
        edge = g.edges[bu, bv]
        if data["tensor"] not in edge["tensor"]:
            edge["tensor"].append(data["tensor"])
            edge["bytes"] += data["bytes"]
        if (u, data["tensor"]) not in sent:
            sent.add((u, data["tensor"]))
            g.nodes[bu]["out_bytes"] += data["bytes"]
    g.graph["block_of"] = block_of
    return ModelGraph(g)
