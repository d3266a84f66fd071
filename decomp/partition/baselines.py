"""Baseline splits that partition searches are compared against.

- `optimal_pipeline`: the contiguous split of the topological order whose slowest stage is fastest
  (dynamic programming as in PipeDream), a stage costing compute plus the bytes it receives.
- `graph_partition`: a DAG split that balances MACs and cuts few bytes (METIS through `pymetis` when it
  is installed, else recursive Kernighan-Lin bisection from networkx), made acyclic by `repair`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

from decomp.errors import InvalidPlanError
from decomp.graph import ModelGraph
from decomp.partition.metrics import partition_metrics
from decomp.partition.plan import PartitionPlan, repair, tensor_flows

__all__ = ["METHODS", "StageCost", "graph_partition", "optimal_pipeline", "pipeline_stage_times"]

METHODS = ("auto", "metis", "kl")


@dataclass(frozen=True)
class StageCost:
    """Seconds a stage takes: its compute, plus the bytes it receives at `bytes_per_s`, plus `overhead_s`.
    Compute is the stage's MACs at `macs_per_s`, or with `measured=True` the sum of its ops' measured
    `seconds` (node attribute set by `decomp.timing.annotate_op_times`): MACs do not take the same
    time everywhere in a network (early convolutions on large feature maps run slower per MAC), so a
    split balanced by measured times is balanced in wall time. The defaults are a rough accelerator
    (1e12 MAC/s) behind a 10 GB/s link."""

    macs_per_s: float = 1e12
    bytes_per_s: float = 1e10
    overhead_s: float = 0.0
    measured: bool = False

    def __post_init__(self) -> None:
        if not (self.macs_per_s > 0 and self.bytes_per_s > 0):
            raise InvalidPlanError(
                f"stage cost rates must be > 0, got macs_per_s={self.macs_per_s}, bytes_per_s={self.bytes_per_s}"
            )
        if not self.overhead_s >= 0:
            raise InvalidPlanError(f"stage overhead_s must be >= 0, got {self.overhead_s}")

    def work(self, graph: ModelGraph, nodes: list[str]) -> np.ndarray:
        """Each node's compute work in this cost's unit: MACs, or measured seconds with `measured`."""
        if not self.measured:
            return np.array([graph[v]["macs"] for v in nodes], dtype=np.int64)
        missing = [v for v in nodes if not isinstance(graph[v].get("seconds"), (int, float))]
        if missing:
            raise InvalidPlanError(
                f"{len(missing)} op(s) have no measured seconds (e.g. {', '.join(missing[:3])}); run decomp.latency."
                "annotate_op_times(graph, op_times(model, inputs)) first, or use StageCost(measured=False)"
            )
        return np.array([graph[v]["seconds"] for v in nodes], dtype=np.float64)

    def time(self, work: Any, received_bytes: Any) -> Any:
        """Stage time from its summed `work` (see `work`) and received bytes, for scalars or numpy arrays:
        the one formula both the DP and the reports use."""
        compute = work if self.measured else work / self.macs_per_s
        return compute + received_bytes / self.bytes_per_s + self.overhead_s


def pipeline_stage_times(graph: ModelGraph, plan: PartitionPlan, cost: StageCost = StageCost()) -> list[float]:
    """Seconds each part of `plan` takes under `cost`, receiving what `partition_metrics` counts."""
    compute = set(graph.compute_nodes())
    work = [cost.work(graph, [n for n in members if n in compute]).sum() for members in plan.members()]
    received = [p.received_bytes for p in partition_metrics(graph, plan).parts]
    return [float(cost.time(w, r)) for w, r in zip(work, received, strict=True)]


def _check_parts(graph: ModelGraph, parts: int) -> list[str]:
    nodes = graph.compute_nodes()
    if not 1 <= parts <= len(nodes):
        raise InvalidPlanError(
            f"cannot split {len(nodes)} compute node(s) into {parts} part(s); ask for 1..{len(nodes)} parts "
            "(or coarsen less)"
        )
    return nodes


def received_matrix(graph: ModelGraph, kept: Mapping[str, float] | None = None) -> np.ndarray:
    """R[i, j] = bytes that stage [i, j) of `graph.compute_nodes()` receives: tensors made before i (model
    inputs included) that a node in [i, j) reads, each once. Built as a sum of rectangles: a tensor made at p
    and read at c1 < c2 < ... is received by [i, j) when, for some k, c(k-1) < i <= c(k) < j (c0 = p).
    `kept`: the share of each producer's output a pruned candidate keeps (default: all of it)."""
    nodes = graph.compute_nodes()
    n = len(nodes)
    where = {v: i for i, v in enumerate(nodes)}
    made: dict[Any, tuple[int, float]] = {}  # tensor -> (producer position, bytes)
    readers: dict[Any, set[int]] = {}
    for u, v, tensor, size in tensor_flows(graph):
        if v not in where or (u not in where and graph[u]["op"] != "placeholder"):
            continue
        made.setdefault(tensor, (where.get(u, -1), size * kept.get(u, 1.0) if kept is not None else size))
        readers.setdefault(tensor, set()).add(where[v])
    rows, cols, values = [], [], []
    for tensor, (producer, size) in made.items():
        previous = producer
        for reader in sorted(readers[tensor]):
            rows += [previous + 1, reader + 1]
            cols += [reader + 1, reader + 1]
            values += [size, -size]
            previous = reader
    dtype = np.int64 if kept is None else np.float64
    table = np.zeros((n + 2, n + 2), dtype=dtype)
    np.add.at(table, (np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp)), np.array(values, dtype))
    np.cumsum(table, axis=0, out=table)
    np.cumsum(table, axis=1, out=table)
    return table[: n + 1, : n + 1]


def optimal_pipeline(graph: ModelGraph, parts: int, cost: StageCost = StageCost()) -> PartitionPlan:
    """The pipeline plan with `parts` stages whose slowest stage is fastest under `cost`; among those, the one
    that sends the fewest bytes in total; among those, the one whose later cuts come earliest (`pipeline_cuts`)."""
    nodes = _check_parts(graph, parts)
    return PartitionPlan.pipeline(graph, pipeline_cuts(cost.work(graph, nodes), received_matrix(graph), parts, cost))


def pipeline_cuts(work: np.ndarray, received: np.ndarray, parts: int, cost: StageCost = StageCost()) -> list[int]:
    """The `parts - 1` cut positions of the optimal pipeline (see `optimal_pipeline`) of nodes with per-node
    `work` (in `cost`'s unit) and `received[i, j]`: the bytes stage [i, j) receives (`received_matrix`).

    Two passes over the (N+1) x (N+1) table of stage times: the first finds the least bottleneck B, the
    second the least total received bytes over splits whose every stage takes at most B. O(K N^2) time
    and O(N^2) memory for N compute nodes."""
    n = len(work)
    if not 1 <= parts <= n:
        raise InvalidPlanError(f"cannot split {n} compute node(s) into {parts} part(s); ask for 1..{n} parts")
    prefix = np.concatenate([np.zeros(1, work.dtype), np.cumsum(work)])
    times = cost.time(prefix[None, :] - prefix[:, None], received)
    rows = np.arange(n + 1)
    times[rows[:, None] >= rows] = np.inf  # stage [i, j) needs i < j
    best = times[0].copy()
    for _ in range(1, parts):
        best = np.maximum(best[:, None], times).min(axis=0)
    bytes_in = np.where(times <= best[n], received.astype(np.float64), np.inf)
    totals = [bytes_in[0].copy()]  # totals[k][j]: fewest bytes for k + 1 stages over [0, j)
    for _ in range(1, parts):
        totals.append((totals[-1][:, None] + bytes_in).min(axis=0))
    cuts, end = [], n
    for k in range(parts - 1, 0, -1):  # the earliest start of stage k that reaches the optimum
        end = int(np.flatnonzero(totals[k - 1] + bytes_in[:, end] == totals[k][end])[0])
        cuts.append(end)
    return sorted(cuts)


def graph_partition(
    graph: ModelGraph, parts: int, method: str = "auto", imbalance: float = 0.05, seed: int = 0
) -> PartitionPlan:
    """A DAG plan with `parts` parts that balances MACs (within about `imbalance`, before repair) and cuts
    few bytes, split on the undirected graph of compute nodes (node weight MACs, edge weight bytes), then
    made acyclic by `repair`. `method`: 'metis' (pymetis), 'kl' (recursive Kernighan-Lin from networkx) or
    'auto' (METIS when pymetis imports, else KL). Same inputs and seed, same plan."""
    nodes = _check_parts(graph, parts)
    if method not in METHODS:
        raise InvalidPlanError(f"unknown graph partition method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0 <= imbalance < 1:
        raise InvalidPlanError(f"imbalance must be in [0, 1), got {imbalance}")
    if method == "auto":
        method = "metis" if _has_pymetis() else "kl"
    macs = np.array([graph[v]["macs"] for v in nodes], dtype=np.int64)
    edges = _undirected_edges(graph, nodes)
    if parts == 1:
        labels = [0] * len(nodes)
    elif method == "metis":
        labels = _metis(macs, edges, parts, imbalance, seed)
    else:
        labels = _kl(macs, edges, parts, imbalance, seed)
    plan = repair(graph, dict(zip(nodes, labels, strict=True)))
    return _fill(graph, plan, parts)


def _has_pymetis() -> bool:
    try:
        import pymetis  # noqa: F401
    except ImportError:
        return False
    return True


def _undirected_edges(graph: ModelGraph, nodes: list[str]) -> dict[tuple[int, int], float]:
    """(a, b) with a < b positions in `nodes` -> weight of the tie between them. A tensor read by m nodes
    gives each of its m edges bytes / m, so cutting it off from all its readers costs its bytes once, as
    `crossings` counts it (an edge-cut partitioner would otherwise pay for it m times)."""
    where = {v: i for i, v in enumerate(nodes)}
    flows = [(u, v, t, size) for u, v, t, size in tensor_flows(graph) if u in where and v in where]
    readers: dict[Any, int] = {}
    for _, _, tensor, _ in flows:
        readers[tensor] = readers.get(tensor, 0) + 1
    edges: dict[tuple[int, int], float] = {}
    for u, v, tensor, size in flows:
        key = (min(where[u], where[v]), max(where[u], where[v]))
        edges[key] = edges.get(key, 0.0) + size / readers[tensor]
    return edges


def _metis(macs: np.ndarray, edges: dict[tuple[int, int], float], parts: int, imbalance: float, seed: int) -> list[int]:
    """k-way METIS. Weights are rescaled to integers METIS sums safely (its index type may be 32-bit);
    every node weighs at least 1 and every edge at least 1, as METIS requires of edges."""
    import pymetis

    n = len(macs)
    total_macs = int(macs.sum())
    node_weights = [1 + (int(m) * 10_000_000 // total_macs if total_macs else 0) for m in macs]
    total_bytes = sum(edges.values()) or 1
    neighbours: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for (a, b), size in sorted(edges.items()):
        weight = 1 + int(size * 100_000_000 // total_bytes)
        neighbours[a].append((b, weight))
        neighbours[b].append((a, weight))
    xadj, adjncy, eweights = [0], [], []
    for row in neighbours:
        adjncy += [b for b, _ in row]
        eweights += [w for _, w in row]
        xadj.append(len(adjncy))
    options = pymetis.Options(seed=seed, ufactor=max(1, round(imbalance * 1000)))
    _, membership = pymetis.part_graph(
        parts, xadj=xadj, adjncy=adjncy, vweights=node_weights, eweights=eweights, options=options
    )
    return [int(p) for p in membership]


def _kl(macs: np.ndarray, edges: dict[tuple[int, int], float], parts: int, imbalance: float, seed: int) -> list[int]:
    """Recursive bisection. networkx's Kernighan-Lin swaps node pairs, so it keeps node counts, not MACs:
    each bisection starts from a topological prefix that holds the target share of MACs (within `imbalance`)
    and cuts the least weight, and Kernighan-Lin's refinement is kept only when it cuts less without
    leaving the MAC share by more than that."""
    g = nx.Graph()
    g.add_nodes_from(range(len(macs)))
    g.add_weighted_edges_from((a, b, size) for (a, b), size in edges.items())
    labels = [0] * len(macs)

    def split(block: list[int], k: int, first: int) -> None:
        if k == 1:
            for i in block:
                labels[i] = first
            return
        left_parts = k // 2
        target = macs[block].sum() * left_parts / k
        slack = imbalance * macs[block].sum() / k  # a part may gain or lose `imbalance` of the mean part
        cut, slack = _prefix_bisection(g, block, macs, target, slack, left_parts, k - left_parts)
        left, right = set(block[:cut]), set(block[cut:])
        sub = g.subgraph(block)
        kl_left, kl_right = nx.algorithms.community.kernighan_lin_bisection(
            sub, partition=(left, right), weight="weight", seed=seed
        )
        if _cut(sub, kl_left) < _cut(sub, left) and abs(macs[list(kl_left)].sum() - target) <= slack:
            left, right = kl_left, kl_right
        split(sorted(left), left_parts, first)
        split(sorted(right), k - left_parts, first + left_parts)

    split(list(range(len(macs))), parts, 0)
    return labels


def _prefix_bisection(
    g: nx.Graph, block: list[int], macs: np.ndarray, target: float, slack: float, left: int, right: int
) -> tuple[int, float]:
    """The prefix length of `block` (positions in topological order) to start a bisection from: among
    prefixes whose MACs are within `slack` of `target`, the one that cuts the least edge weight (else the
    one nearest the target); each side keeps at least `left` / `right` nodes. Returns it and the MAC slack
    the refinement may use (wider when no prefix was within `slack`)."""
    local = {node: i for i, node in enumerate(block)}
    crossing = np.zeros(len(block) + 1)  # crossing[c]: weight of edges between block[:c] and block[c:]
    for a, b, w in g.subgraph(block).edges(data="weight"):
        lo, hi = sorted((local[a], local[b]))
        crossing[lo + 1] += w
        crossing[hi + 1] -= w
    crossing = np.cumsum(crossing)
    lengths = np.arange(left, len(block) - right + 1)
    miss = np.abs(np.cumsum(macs[block])[lengths - 1] - target)
    near = miss <= slack
    if near.any():
        best = np.lexsort((miss[near], crossing[lengths[near]]))[0]
        cut = int(lengths[near][best])
    else:
        cut = int(lengths[np.argmin(miss)])
    return cut, max(slack, float(np.abs(macs[block[:cut]].sum() - target)))


def _cut(g: nx.Graph, side: set[int]) -> float:
    return sum(w for a, b, w in g.edges(data="weight") if (a in side) != (b in side))


def _fill(graph: ModelGraph, plan: PartitionPlan, parts: int) -> PartitionPlan:
    """Split the heaviest parts until there are `parts` of them (repair can empty a part). Cutting a part
    into a topological prefix and suffix keeps the plan acyclic: a cycle through the two halves would be
    one through the whole part before, and the suffix never feeds the prefix."""
    while plan.parts < parts:
        part = plan.part_of()
        members: list[list[str]] = [[] for _ in range(plan.parts)]
        for n in graph.compute_nodes():
            members[part[n]].append(n)
        splittable = [k for k, m in enumerate(members) if len(m) > 1]
        heaviest = max(splittable, key=lambda k: (sum(graph[n]["macs"] for n in members[k]), -k))
        nodes = members[heaviest]
        cumulative = np.cumsum([graph[n]["macs"] for n in nodes])
        cut = int(np.clip(np.searchsorted(cumulative, cumulative[-1] / 2) + 1, 1, len(nodes) - 1))
        part.update(dict.fromkeys(nodes[cut:], plan.parts))
        plan = PartitionPlan.from_assignment(part, "dag", graph=graph).validate(graph)
    return plan
