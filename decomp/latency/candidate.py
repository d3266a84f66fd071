"""What a candidate costs (a pruning plan and a partition plan on one costed graph), computed without
pruning, splitting or running anything: `CostModel(graph, ...)(pruning, partition)` gives a
`CandidateCost` in well under a millisecond on a resnet50-size graph.

The pruning plan goes through `decomp.pruning.Estimator` (no pruning, no tracing), the partition plan
through an array version of `decomp.partition.partition_metrics` and `LatencyModel.predict` that gives
the same values on the estimated graph (the tests check it); the pipelined times come from the one
formula both use, `decomp.latency.pipeline.pipeline_times`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from decomp.errors import InvalidPlanError, SearchError
from decomp.graph import ModelGraph
from decomp.latency.pipeline import pipeline_times
from decomp.latency.predict import Calibration, LatencyModel
from decomp.partition.baselines import StageCost
from decomp.partition.metrics import batch_size
from decomp.partition.plan import PartitionPlan, tensor_flows
from decomp.pruning.estimate import Estimate, Estimator
from decomp.pruning.plan import PruningPlan

__all__ = ["CandidateCost", "CostModel"]


@dataclass(frozen=True)
class CandidateCost:
    """Every cheap metric of a candidate, for one forward pass of the graph's batch (micro-batch)."""

    macs: float  # multiply-accumulates
    params: float  # parameters after channel removal (dense)
    nonzero_params: float  # parameters left nonzero after unstructured and N:M sparsity
    size_bytes: float  # bytes of the parameters after channel removal (dense)
    activation_bytes: float  # bytes of every op's output
    parts: float  # parts of the partition plan
    replicas: float  # copies of the pipeline sharing the micro-batches (see CostModel's replicas)
    latency_s: float  # one batch of M micro-batches through the parts
    throughput: float  # samples per second, pipelined over the parts
    bottleneck_s: float  # seconds per micro-batch of the slowest part (compute + receive)
    comm_bytes: float  # bytes sent to parts per forward pass (between parts and inputs)
    peak_memory: float  # peak bytes on the busiest device (parameters + live activations)
    balance: float  # MACs of the heaviest part over the mean part's
    # root mean square of the stage times: with the bottleneck unchanged, lower means the other stages are
    # more even (a tie-break for local searches over pipeline cuts)
    stage_rms_s: float
    accuracy_proxy: float | None = None  # mean share of each group's channel importance kept (with importances)

    def metrics(self) -> dict[str, float]:
        """The metrics by name, in field order; `accuracy_proxy` only where it was computed."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.accuracy_proxy is None:
            del out["accuracy_proxy"]
        return out


class CostModel:
    """Every cheap metric of a candidate (`CandidateCost`) from one costed, group-annotated op graph built
    at the micro-batch size.

    Times come from `latency_model` (its op tables, calibrations and cluster; part k on device k unless
    the plan gives device hints) or, without one, from `stage_cost` (default `StageCost()`: MACs at a
    fixed rate, or measured `seconds` with `StageCost(measured=True)`, bytes over one link), the cost
    `optimal_pipeline` splits by. Pruned op times are the unpruned ones scaled by the op's MAC (or
    bytes) fraction. `importances`: per group, one score per channel (`decomp.pruning.
    channel_importance`, computed once by the caller) for `accuracy_proxy`. `replicas`: copies of the
    pipeline run side by side on devices of their own, sharing the micro-batches (`pipeline_times`); an
    int, or `"auto"`: as many copies as the cluster's devices hold (devices // parts, per candidate, so a
    plan of fewer parts is priced with more copies; 1 without a latency model).
    """

    def __init__(
        self,
        graph: ModelGraph,
        latency_model: LatencyModel | None = None,
        micro_batches: int = 1,
        importances: Mapping[str, Sequence[float]] | None = None,
        stage_cost: StageCost | None = None,
        replicas: int | str = 1,
    ) -> None:
        if micro_batches < 1:
            raise SearchError(f"micro_batches must be >= 1, got {micro_batches}")
        if replicas != "auto" and not (isinstance(replicas, int) and replicas >= 1):
            raise SearchError(f"replicas must be an integer >= 1 or 'auto', got {replicas!r}")
        self.replicas = replicas
        self.graph, self.latency_model, self.micro_batches, self.stage_cost = (
            graph,
            latency_model,
            micro_batches,
            stage_cost or StageCost(),
        )
        self.estimator = est = Estimator(graph)
        self.nodes = graph.compute_nodes()
        self.at = {n: i for i, n in enumerate(self.nodes)}
        self.rows = np.array([est.index[n] for n in self.nodes], dtype=np.intp)
        self.batch = batch_size(graph)
        self._flows()
        self._base_seconds()
        self._importances(importances or {})

    # -- precomputation ----------------------------------------------------------------------------
    def _flows(self) -> None:
        """Tensor flows into compute nodes as (source position or -1 for an input, target position,
        tensor id, edge index), in `tensor_flows` order, as `crossings` walks them."""
        edge_at = {e: k for k, e in enumerate(self.estimator.edges)}
        tensors: dict[object, int] = {}
        self.flows: list[tuple[int, int, int, int]] = []
        self.outputs: set[int] = set()
        for u, v, tensor, _ in tensor_flows(self.graph):
            if self.graph[v]["op"] == "output" and u in self.at:
                self.outputs.add(self.at[u])
            if v not in self.at or (u not in self.at and self.graph[u]["op"] != "placeholder"):
                continue
            tid = tensors.setdefault(tensor, len(tensors))
            self.flows.append((self.at.get(u, -1), self.at[v], tid, edge_at[u, v]))

    def _base_seconds(self) -> None:
        """Unpruned op seconds per device kind (node `seconds`, else table, else roofline)."""
        self.seconds: dict[str, np.ndarray] = {}
        if self.latency_model is not None:
            for kind in self.latency_model.cluster.kinds:
                seconds, _ = self.latency_model.op_seconds(self.graph, kind)
                self.seconds[kind.name] = np.array([seconds[n] for n in self.nodes])
        elif self.stage_cost.measured:
            self.stage_cost.work(self.graph, self.nodes)  # raises, naming the ops without seconds

    def _importances(self, importances: Mapping[str, Sequence[float]]) -> None:
        groups = self.estimator.groups
        unknown = sorted(set(importances) - set(groups))
        if unknown:
            raise SearchError(f"importances for group(s) the graph does not have: {', '.join(unknown[:5])}")
        self.scores: dict[str, np.ndarray] = {}
        self.ranked: dict[str, np.ndarray] = {}
        for gid, scores in importances.items():
            s = np.abs(np.asarray(scores, dtype=np.float64))
            if len(s) != groups[gid]["channels"] or not s.sum() > 0:
                raise SearchError(
                    f"group {gid} has {groups[gid]['channels']} channels; give one score per channel, not all "
                    f"zero (got {len(s)})"
                )
            self.scores[gid] = s / s.sum()
            self.ranked[gid] = np.cumsum(np.sort(self.scores[gid])[::-1])

    # -- evaluation --------------------------------------------------------------------------------
    def __call__(self, pruning: PruningPlan | None = None, partition: PartitionPlan | None = None) -> CandidateCost:
        """Every cheap metric of a candidate (no pruning plan: nothing pruned; no partition plan: one part)."""
        pruning = pruning or PruningPlan()
        estimate = self.estimator(pruning)
        plan = partition or PartitionPlan(tuple((n, 0) for n in self.nodes), "pipeline")
        part = self._parts_of(plan)
        return CandidateCost(
            macs=estimate.total_macs,
            params=estimate.total_params,
            nonzero_params=estimate.nonzero_params,
            size_bytes=estimate.total_param_bytes,
            activation_bytes=float(estimate.out_bytes[self.rows].sum()),
            parts=float(plan.parts),
            replicas=float(self.copies(plan.parts)),
            **self._partition(estimate, plan, part),
            accuracy_proxy=self._proxy(estimate, pruning) if self.scores else None,
        )

    def copies(self, parts: int) -> int:
        """Replicas a plan of `parts` parts is priced with."""
        if self.replicas != "auto":
            return int(self.replicas)
        if self.latency_model is None:
            return 1
        return max(1, len(self.latency_model.cluster.devices) // max(parts, 1))

    def _parts_of(self, plan: PartitionPlan) -> np.ndarray:
        part = np.full(len(self.nodes), -1, dtype=np.intp)
        for n, p in plan.assignment:
            if n not in self.at:
                raise InvalidPlanError(f"the partition plan assigns {n!r}, which is not a compute node of the graph")
            part[self.at[n]] = p
        if (part < 0).any():
            missing = [self.nodes[i] for i in np.flatnonzero(part < 0)[:5]]
            raise InvalidPlanError(f"compute node(s) without a part: {', '.join(missing)}; assign every node")
        return part

    def _proxy(self, estimate: Estimate, pruning: PruningPlan) -> float:
        explicit = {c.group: c.keep for c in pruning.groups if c.keep is not None}
        shares = []
        for gid, scores in self.scores.items():
            if gid in explicit:
                shares.append(float(scores[list(explicit[gid])].sum()))
            else:
                kept = round(estimate.fractions[gid] * len(scores))
                shares.append(float(self.ranked[gid][max(kept, 1) - 1]))
        return float(np.mean(shares))

    # -- partition costs ---------------------------------------------------------------------------
    def _crossings(self, part: list[int], edge_bytes: list[float]) -> list[tuple[int, int, float]]:
        """(source part or -1, receiving part, bytes): each tensor once per receiving part."""
        seen: set[tuple[int, int]] = set()
        out = []
        for src, dst, tid, e in self.flows:
            q = part[dst]
            p = part[src] if src >= 0 else -1
            if p == q or (tid, q) in seen:
                continue
            seen.add((tid, q))
            out.append((p, q, edge_bytes[e]))
        return out

    def _peaks(self, part: list[int], k: int, out_bytes: list[float], edge_bytes: list[float]) -> np.ndarray:
        """Most activation bytes live at once per part, as `partition_metrics` counts them: received tensors
        live until their last reader, outputs until their last local reader (or the end when another part
        or the caller needs them)."""
        kept = set(self.outputs)
        last_local: dict[int, int] = {}
        incoming: dict[tuple[int, int], list[float]] = {}  # (part, tensor) -> [bytes, last reader]
        for src, dst, tid, e in self.flows:
            q = part[dst]
            if src >= 0 and part[src] == q:
                last_local[src] = max(last_local.get(src, -1), dst)
                continue
            if src >= 0:
                kept.add(src)
            held = incoming.setdefault((q, tid), [edge_bytes[e], -1])
            held[1] = max(held[1], dst)
        live = [0.0] * k
        free: dict[int, float] = {}
        for (q, _), (size, last) in incoming.items():
            live[q] += size
            free[last] = free.get(last, 0.0) + size
        peak = list(live)
        for i in range(len(self.nodes)):
            q, size = part[i], out_bytes[i]
            peak[q] = max(peak[q], live[q] + size)
            live[q] += size
            if i not in kept:
                end = last_local.get(i, i)
                free[end] = free.get(end, 0.0) + size
            live[q] -= free.pop(i, 0.0)
        return np.array(peak)

    def _partition(self, estimate: Estimate, plan: PartitionPlan, part: np.ndarray) -> dict[str, float]:
        k = int(part.max()) + 1
        rows = self.rows
        labels, edge_bytes = part.tolist(), estimate.edge_bytes.tolist()  # plain lists: fast in loops
        crossings = self._crossings(labels, edge_bytes)
        macs = np.bincount(part, weights=estimate.macs[rows], minlength=k)
        memory = np.bincount(part, weights=estimate.param_bytes[rows], minlength=k)
        memory += self._peaks(labels, k, estimate.out_bytes[rows].tolist(), edge_bytes)
        if self.latency_model is None:
            compute, link_s, devices = self._stage_cost(estimate, part, k, macs)
        else:
            compute, link_s, devices = self._predicted(estimate, plan, part, k)
        received, in_bytes = np.zeros(k), np.zeros(k)
        edge_s: dict[tuple[int, int], float] = {}
        for p, q, size in crossings:
            t = link_s(p, q, size)
            received[q] += t
            in_bytes[q] += size
            if p >= 0:
                edge_s[p, q] = edge_s.get((p, q), 0.0) + t
        # what the runtime adds around each call of a part (a calibration's per_call / per_in_byte terms)
        runtime = self._runtime(plan, k, in_bytes)
        times = pipeline_times(
            compute.tolist(),
            runtime.tolist(),
            received.tolist(),
            edge_s,
            self.micro_batches,
            self.batch,
            self.copies(k),
        )
        per_device: dict[str, float] = {}
        for q in range(k):
            per_device[devices[q]] = per_device.get(devices[q], 0.0) + memory[q]
        mean = macs.mean()
        return {
            "latency_s": times.latency_s,
            "throughput": times.throughput,
            "bottleneck_s": times.bottleneck_s,
            "comm_bytes": float(sum(size for _, _, size in crossings)),
            "peak_memory": float(max(per_device.values())),
            "balance": float(macs.max() / mean) if mean > 0 else 1.0,
            "stage_rms_s": float(np.sqrt(np.mean(np.array(times.stage_s) ** 2))),
        }

    def _runtime(self, plan: PartitionPlan, k: int, in_bytes: np.ndarray) -> np.ndarray:
        if self.latency_model is None:
            return np.zeros(k)
        model = self.latency_model
        chosen = list(plan.devices) or list(range(k))
        out = np.zeros(k)
        for q in range(k):
            name = model.cluster.device(chosen[q]).kind.name
            out[q] = model.calibrations.get(name, Calibration()).runtime(float(in_bytes[q]))
        return out

    def _stage_cost(self, estimate: Estimate, part: np.ndarray, k: int, macs: np.ndarray):
        cost = self.stage_cost
        work = macs if not cost.measured else np.bincount(part, weights=estimate.seconds[self.rows], minlength=k)
        compute = np.array([cost.time(w, 0.0) for w in work])
        return compute, lambda p, q, size: size / cost.bytes_per_s, [str(q) for q in range(k)]

    def _predicted(self, estimate: Estimate, plan: PartitionPlan, part: np.ndarray, k: int):
        """Part compute seconds and link times as `LatencyModel.predict` gives them on the estimated graph."""
        model = self.latency_model
        chosen = list(plan.devices) or list(range(k))
        placed = [model.cluster.device(d) for d in chosen]
        scale = estimate.time_fraction[self.rows]
        rows = self.rows
        traffic = (
            estimate.out_bytes[rows]
            + np.bincount(self.estimator.edge_target, weights=estimate.edge_bytes, minlength=len(self.estimator.nodes))[
                rows
            ]
        )
        counts = np.bincount(part, minlength=k)
        moved = np.bincount(part, weights=traffic, minlength=k)
        compute = np.zeros(k)
        for q in range(k):
            name = placed[q].kind.name
            seconds = float((self.seconds[name] * scale)[part == q].sum())
            calibration = model.calibrations.get(name, Calibration())
            compute[q] = calibration.apply(seconds, int(counts[q]), float(moved[q])) if counts[q] else 0.0

        def link_s(p: int, q: int, size: float) -> float:
            return model.cluster.link(chosen[p if p >= 0 else 0], chosen[q]).time(size)

        return compute, link_s, [d.id for d in placed]
