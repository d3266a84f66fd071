"""What a partition plan costs: compute, parameters, activations and peak memory per part, and the bytes
that cross between parts, per batch and per sample.

Transfers are counted by `crossings` (plan.py), the same rule the quotient graph and the pipeline baseline
use: a tensor read by several nodes of one part is sent to it once; read by two other parts, it is sent twice.
On a block graph a block is the unit: its members' outputs (`activation_bytes`) are all counted as live
while it runs, an upper bound on the memory inside it, and only what it sends to other blocks (`out_bytes`)
stays live after it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from decomp.errors import InvalidPlanError
from decomp.graph import ModelGraph
from decomp.partition.plan import PartitionPlan, crossings, tensor_flows

__all__ = ["PartMetrics", "PartitionMetrics", "batch_size", "partition_metrics"]


@dataclass(frozen=True)
class PartMetrics:
    """Costs of one part for one batch. `received_bytes` counts tensors from other parts and model inputs;
    `sent_bytes` tensors for other parts (once per receiving part); `output_bytes` model outputs it returns;
    `peak_bytes` its parameter bytes plus the most activation bytes live at once while it runs."""

    part: int
    nodes: int
    macs: int
    params: int
    param_bytes: int
    activation_bytes: int
    peak_bytes: int
    received_bytes: int
    sent_bytes: int
    output_bytes: int


@dataclass(frozen=True)
class PartitionMetrics:
    """Costs of a whole plan. `transfers`: (from part, to part, bytes) per batch; `cut_bytes`: their sum;
    `input_bytes`: model inputs sent to the parts that read them; `balance`: max part MACs / mean part MACs
    (1.0 is perfect). Per-sample figures divide by `batch`, the first dimension of the model's first input."""

    parts: tuple[PartMetrics, ...]
    transfers: tuple[tuple[int, int, int], ...]
    cut_bytes: int
    input_bytes: int
    output_bytes: int
    batch: int
    balance: float

    @property
    def macs(self) -> int:
        return sum(p.macs for p in self.parts)

    @property
    def max_peak_bytes(self) -> int:
        return max(p.peak_bytes for p in self.parts)

    @property
    def comm_bytes(self) -> int:
        """Everything sent to a part per batch: tensors between parts plus model inputs."""
        return self.cut_bytes + self.input_bytes

    @property
    def cut_bytes_per_sample(self) -> float:
        return self.cut_bytes / self.batch

    @property
    def comm_bytes_per_sample(self) -> float:
        return self.comm_bytes / self.batch

    def to_json(self) -> dict[str, Any]:
        return {
            "parts": [asdict(p) for p in self.parts],
            "transfers": [list(t) for t in self.transfers],
            "cut_bytes": self.cut_bytes,
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "comm_bytes": self.comm_bytes,
            "batch": self.batch,
            "cut_bytes_per_sample": self.cut_bytes_per_sample,
            "comm_bytes_per_sample": self.comm_bytes_per_sample,
            "balance": self.balance,
            "macs": self.macs,
            "max_peak_bytes": self.max_peak_bytes,
        }


def batch_size(graph: ModelGraph) -> int:
    """The first dimension of the graph's first input; 1 when the graph records no batched input."""
    inputs = graph.nx.graph.get("inputs") or []
    shape = inputs[0].get("shape") if inputs else None
    if shape and isinstance(shape[0], int) and shape[0] >= 1:
        return shape[0]
    return 1


def partition_metrics(graph: ModelGraph, plan: PartitionPlan, batch: int | None = None) -> PartitionMetrics:
    """Validate `plan` against `graph` and measure it; `batch` overrides the batch size read from the graph."""
    plan.validate(graph)
    if batch is None:
        batch = batch_size(graph)
    elif batch < 1:
        raise InvalidPlanError(f"batch must be >= 1 to give per-sample bytes, got {batch}")
    part = plan.part_of()
    members: list[list[str]] = [[] for _ in range(plan.parts)]
    for n in graph.compute_nodes():
        members[part[n]].append(n)
    received = [0] * plan.parts
    sent = [0] * plan.parts
    between: dict[tuple[int, int], int] = {}
    input_bytes = 0
    for _, source, target, size in crossings(graph, plan):
        received[target] += size
        if source is None:
            input_bytes += size
        else:
            sent[source] += size
            between[source, target] = between.get((source, target), 0) + size
    outputs = _outputs(graph, part)
    output_bytes = [0] * plan.parts
    for n in outputs:
        output_bytes[part[n]] += graph[n]["out_bytes"]
    peaks = _peak_activations(graph, part, members, outputs)
    parts = []
    for k, nodes in enumerate(members):
        macs = params = param_bytes = made = 0
        for n in nodes:
            data = graph[n]
            macs += data["macs"]
            params += data["params"]
            param_bytes += data["param_bytes"]
            made += _made(graph, n)
        parts.append(
            PartMetrics(
                part=k,
                nodes=len(nodes),
                macs=macs,
                params=params,
                param_bytes=param_bytes,
                activation_bytes=made,
                peak_bytes=param_bytes + peaks[k],
                received_bytes=received[k],
                sent_bytes=sent[k],
                output_bytes=output_bytes[k],
            )
        )
    macs = [p.macs for p in parts]
    mean = sum(macs) / len(macs)
    return PartitionMetrics(
        parts=tuple(parts),
        transfers=tuple((s, t, b) for (s, t), b in sorted(between.items())),
        cut_bytes=sum(between.values()),
        input_bytes=input_bytes,
        output_bytes=sum(output_bytes),
        batch=batch,
        balance=max(macs) / mean if mean > 0 else 1.0,
    )


def _made(graph: ModelGraph, node: str) -> int:
    """Bytes a node produces while it runs: its output, or all its members' outputs for a block."""
    data = graph[node]
    return data.get("activation_bytes", data["out_bytes"])


def _outputs(graph: ModelGraph, part: dict[str, int]) -> set[str]:
    """Compute nodes whose result the model returns (read by the graph's output node)."""
    return {u for u, v in graph.nx.edges if u in part and graph[v]["op"] == "output"}


def _peak_activations(
    graph: ModelGraph, part: dict[str, int], members: list[list[str]], outputs: set[str]
) -> list[int]:
    """Most activation bytes live at once in each part, running its nodes in topological order. Received
    tensors are live from the start until their last reader in the part; a node's output from when it runs
    until its last reader in the part, or to the end when another part or the caller needs it."""
    step = {n: i for nodes in members for i, n in enumerate(nodes)}
    incoming: list[dict[Any, tuple[int, int]]] = [{} for _ in members]  # tensor -> (bytes, last reader step)
    last_local: dict[str, int] = {}
    kept = set(outputs)
    for u, v, tensor, size in tensor_flows(graph):
        if v not in part:
            continue
        q = part[v]
        if u in part and part[u] == q:
            last_local[u] = max(last_local.get(u, -1), step[v])
        elif u in part or graph[u]["op"] == "placeholder":
            if u in part:
                kept.add(u)
            held = incoming[q].get(tensor, (size, -1))  # sized by its first edge, as crossings() counts it
            incoming[q][tensor] = (held[0], max(step[v], held[1]))
    peaks = []
    for k, nodes in enumerate(members):
        free_at: dict[int, int] = {}
        for size, last in incoming[k].values():
            free_at[last] = free_at.get(last, 0) + size
        live = peak = sum(size for size, _ in incoming[k].values())
        for i, n in enumerate(nodes):
            peak = max(peak, live + _made(graph, n))
            live += graph[n]["out_bytes"]
            if n not in kept:
                end = last_local.get(n, i)
                free_at[end] = free_at.get(end, 0) + graph[n]["out_bytes"]
            live -= free_at.pop(i, 0)
        peaks.append(peak)
    return peaks
