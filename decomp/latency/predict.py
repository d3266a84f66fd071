"""Predict a candidate's latency, pipelined throughput, communication and memory per device from its
costed graph (pruned or not), a partition plan and a cluster spec, without running it.

Each op costs its own `seconds` attribute where it has one (measured on the graph, or scaled for a
pruned candidate), else what the op table of its device kind says; an op the table lacks is priced by the
op model learned from that table (`decomp.latency.opmodel`: what this device showed on other ops, e.g.
after `decomp profile --sweep`), or, without a table to learn from (a device kind nobody profiled), by a
roofline estimate, max(2 x MACs / peak FLOP/s, bytes read and written / memory bandwidth); both are
counted in `Prediction.estimated_ops`. A part's time per micro-batch is `scale x (sum of its ops) + per_op x
(its op count) + per_byte x (activation bytes its ops read and write) + fixed` with the device kind's
`Calibration` (fitted by `calibrate` on measured runs; identity by default). The bytes term is the
cost of memory traffic an op timed alone does not pay: timed alone, its inputs stay in cache between
repeats; in the model they come from the op before, often from main memory. A tensor sent between
parts costs its link's latency plus bytes over bandwidth (`ClusterSpec.link`), once per receiving part.

- latency of one batch: M micro-batches through the DAG of parts, the critical path of one
  micro-batch plus (M - 1) bottleneck stages;
- pipelined throughput: samples per second with M micro-batches, each stage (compute plus what it
  receives) running one micro-batch at a time: M x micro-batch / ((M + K - 1) x bottleneck), where
  (K - 1) / (M + K - 1) is the pipeline bubble (both from `decomp.latency.pipeline.pipeline_times`, the
  formula the candidate cost model uses too);
- memory per device: the parts' peak bytes (`partition_metrics`) summed per device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from decomp.errors import GraphError
from decomp.graph import ModelGraph
from decomp.latency.cluster import ClusterSpec, DeviceKind
from decomp.latency.pipeline import pipeline_times
from decomp.latency.table import OpTable, op_signature
from decomp.partition.metrics import batch_size, partition_metrics
from decomp.partition.plan import PartitionPlan, crossings

__all__ = ["Calibration", "LatencyModel", "Prediction", "activation_traffic", "calibrate"]


@dataclass(frozen=True)
class Calibration:
    """Per-device-kind correction of summed op times to what a part takes when run: `scale x ops + per_op
    x op count + per_byte x activation bytes + fixed` seconds per call of its compute; and what the
    runtime adds around each call of a part, outside its compute: `per_call` seconds plus `per_in_byte`
    seconds per byte the part receives (dispatch, moving tensors between processes through Ray's
    object store; fitted by `decomp calibrate` for the runtime it ran, 0 for in-process calls)."""

    scale: float = 1.0
    per_op: float = 0.0
    per_byte: float = 0.0
    fixed: float = 0.0
    per_call: float = 0.0
    per_in_byte: float = 0.0

    def runtime(self, in_bytes: float) -> float:
        """Seconds the runtime adds to one call of a part that receives `in_bytes`."""
        return self.per_call + self.per_in_byte * in_bytes

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, float]) -> Calibration:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise GraphError(
                f"unknown calibration term(s) {', '.join(unknown)}; valid: {', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**{k: float(v) for k, v in data.items()})

    def apply(self, op_seconds: float, ops: int, traffic: float = 0.0) -> float:
        return self.scale * op_seconds + self.per_op * ops + self.per_byte * traffic + self.fixed


def calibrate(
    op_seconds: Sequence[float],
    ops: Sequence[int],
    measured: Sequence[float],
    traffic: Sequence[float] | None = None,
) -> Calibration:
    """Least-squares fit of `measured ~ scale x op_seconds + per_op x ops + per_byte x traffic + fixed` over
    runs (a part's summed table times, its op count, the activation bytes its ops read and write
    (`activation_traffic`), its measured seconds per call), minimising relative error, with every term
    kept >= 0 (a term that would go negative is dropped and the rest refitted). Without `traffic` the
    bytes term stays 0."""
    n = len(measured)
    columns = [op_seconds, ops, traffic if traffic is not None else [0.0] * n, [1.0] * n]
    x = np.array(columns, dtype=np.float64).T
    y = np.asarray(measured, dtype=np.float64)
    if n < 3 or not np.all(y > 0):
        raise GraphError(f"calibration needs at least 3 runs with measured times > 0, got {n}")
    weights = 1.0 / y  # relative error: a 1 ms part counts as much as a 1 s one
    active = [0, 1, 3] if traffic is None else [0, 1, 2, 3]
    while True:
        coef, *_ = np.linalg.lstsq(x[:, active] * weights[:, None], y * weights, rcond=None)
        if np.all(coef >= 0) or len(active) == 1:
            break
        active.pop(int(np.argmin(coef)))
    full = np.zeros(4)
    full[active] = np.maximum(coef, 0.0)
    return Calibration(*map(float, full))


def activation_traffic(graph: ModelGraph, nodes: Sequence[str]) -> float:
    """Bytes `nodes` read from their inputs and write as outputs (parameters not counted)."""
    traffic = _node_traffic(graph)
    return float(sum(traffic[n] for n in nodes))


def _node_traffic(graph: ModelGraph) -> dict[str, int]:
    """Bytes each compute node reads (its in-edges) and writes (its output); computed once per graph."""
    return graph.derived("traffic", _traffic)


def _traffic(graph: ModelGraph) -> dict[str, int]:
    out = {n: graph[n].get("out_bytes", 0) for n in graph.compute_nodes()}
    for _, v, nbytes in graph.nx.edges(data="bytes", default=0):
        if v in out:
            out[v] += nbytes
    return out


@dataclass(frozen=True)
class Prediction:
    """What a candidate is predicted to cost on a cluster (seconds, samples per second, bytes)."""

    latency_s: float  # one batch of M micro-batches, end to end
    throughput: float  # samples per second, pipelined
    stage_s: tuple[float, ...]  # per part and micro-batch: compute plus receiving its inputs
    compute_s: tuple[float, ...]  # per part and micro-batch: compute only
    comm_s: float  # per batch: every transfer between parts (and inputs to the parts that read them)
    bottleneck_s: float
    bubble: float  # (K - 1) / (M + K - 1)
    memory_bytes: tuple[int, ...]  # per device of the plan, peak
    micro_batch: int
    micro_batches: int
    replicas: int
    estimated_ops: int  # ops no measurement prices (no table entry): priced by the op model, else the roofline

    def to_json(self) -> dict:
        return asdict(self)


class LatencyModel:
    """Op tables and calibrations per device kind (`tables[kind.name]`), with the cluster they price."""

    def __init__(
        self,
        cluster: ClusterSpec,
        tables: Mapping[str, OpTable] | None = None,
        calibrations: Mapping[str, Calibration] | None = None,
    ) -> None:
        self.cluster = cluster
        self.tables = dict(tables or {})
        self.calibrations = dict(calibrations or {})

    def op_seconds(self, graph: ModelGraph, kind: DeviceKind) -> tuple[dict[str, float], set[str]]:
        """Seconds of every compute node of `graph` on a device of `kind`, and the nodes no measurement
        gives a time (priced by the op model or the roofline). A node's own `seconds` attribute comes
        first, on every device kind: it is measured on this very graph (`annotate_op_times`) or scaled
        for a pruned candidate whose pruned shapes no table holds (`decomp.pruning.Estimator`); then the
        table's entry for its signature; then the op model learned from the table (`OpTable.op_model`:
        an op this device never ran, priced from the ops it did); without a table large enough to learn
        from, the roofline."""
        table = self.tables.get(kind.name)
        out, estimated = {}, set()
        unseen: dict[str, str] = {}  # node -> signature, for the op model
        for n in graph.compute_nodes():
            seconds = graph[n].get("seconds")
            if seconds is None and table is not None:
                sig = op_signature(graph, n)
                seconds = table.get(sig)
                if seconds is None:
                    unseen[n] = sig
            if seconds is None:
                seconds = _roofline(graph, n, kind)
                estimated.add(n)
            out[n] = seconds
        learned = table.op_model() if unseen else None
        if learned is not None:
            out.update(zip(unseen, learned.predict(list(unseen.values())), strict=True))
        return out, estimated

    def predict(
        self,
        graph: ModelGraph,
        plan: PartitionPlan | None = None,
        micro_batches: int = 1,
        devices: Sequence[int | str] | None = None,
        replicas: int = 1,
    ) -> Prediction:
        """Predict `graph` (built at the micro-batch size) split by `plan` (default: one part), part k on
        `devices[k]` (default: the plan's device hints, else cluster device k); `replicas` copies of the
        pipeline on devices like these share the micro-batches (`pipeline_times`)."""
        if micro_batches < 1:
            raise GraphError(f"micro_batches must be >= 1, got {micro_batches}")
        nodes = graph.compute_nodes()
        plan = plan or PartitionPlan.from_assignment({n: 0 for n in nodes}, "pipeline")
        k = plan.parts
        chosen = list(devices) if devices is not None else (list(plan.devices) or list(range(k)))
        if len(chosen) != k:
            raise GraphError(f"{len(chosen)} devices for a plan of {k} parts")
        placed = [self.cluster.device(d) for d in chosen]
        part_of = plan.part_of()
        priced = {p.kind.name: self.op_seconds(graph, p.kind) for p in {d.id: d for d in placed}.values()}
        counts, sums, traffic, estimated = [0] * k, [0.0] * k, [0.0] * k, 0
        node_traffic = _node_traffic(graph)
        for n in nodes:
            p = part_of[n]
            seconds, guessed = priced[placed[p].kind.name]
            sums[p] += seconds[n]
            counts[p] += 1
            traffic[p] += node_traffic[n]
            estimated += n in guessed
        compute = [
            self.calibrations.get(placed[p].kind.name, Calibration()).apply(sums[p], counts[p], traffic[p])
            if counts[p]
            else 0.0
            for p in range(k)
        ]
        # transfers: tensor from producer's part to each receiving part (inputs come from part 0's device)
        received, in_bytes = [0.0] * k, [0] * k
        edge_s: dict[tuple[int, int], float] = {}
        for _, src, dst, nbytes in crossings(graph, plan):
            link = self.cluster.link(chosen[src if src is not None else 0], chosen[dst])
            t = link.time(nbytes)
            received[dst] += t
            in_bytes[dst] += nbytes
            if src is not None:
                edge_s[src, dst] = edge_s.get((src, dst), 0.0) + t
        # what the runtime adds around each call of a part (0 unless a calibration for a runtime says so)
        runtime = [
            self.calibrations.get(placed[p].kind.name, Calibration()).runtime(in_bytes[p]) if counts[p] else 0.0
            for p in range(k)
        ]
        micro = batch_size(graph)
        memory: dict[str, int] = {}
        for p, part in enumerate(partition_metrics(graph, plan).parts):
            memory[placed[p].id] = memory.get(placed[p].id, 0) + part.peak_bytes
        times = pipeline_times(compute, runtime, received, edge_s, micro_batches, micro, replicas)
        return Prediction(
            latency_s=times.latency_s,
            throughput=times.throughput,
            stage_s=times.stage_s,
            compute_s=tuple(compute),
            comm_s=sum(received) * micro_batches,
            bottleneck_s=times.bottleneck_s,
            bubble=times.bubble,
            memory_bytes=tuple(memory.values()),
            micro_batch=micro,
            micro_batches=micro_batches,
            replicas=replicas,
            estimated_ops=estimated,
        )


def _roofline(graph: ModelGraph, node: str, kind: DeviceKind) -> float:
    d = graph[node]
    read = sum(graph.nx.edges[u, node].get("bytes", 0) for u in graph.nx.predecessors(node))
    moved = read + d.get("out_bytes", 0) + d.get("param_bytes", 0)
    return max(2.0 * d.get("macs", 0) / kind.peak_flops, moved / kind.mem_bandwidth)
