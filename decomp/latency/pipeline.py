"""Pipelined time of M micro-batches through K parts: the one formula `LatencyModel.predict` and the
candidate cost model (`decomp.latency.candidate.CostModel`) both price a partition with.

Each part (stage) runs one micro-batch at a time; per micro-batch it computes (`compute_s`), receives
its inputs (`received_s`) and pays what the runtime adds around a call (`runtime_s`). Then:

- bottleneck: the slowest stage, compute + received + runtime;
- latency of one batch: the critical path of one micro-batch through the DAG of parts (a part starts
  when its last input arrives: the sender's finish plus the transfer, `edge_s`), plus (M - 1)
  bottleneck stages;
- throughput: M x micro-batch / ((M + K - 1) x bottleneck) samples per second, where
  (K - 1) / (M + K - 1) is the pipeline bubble.

With R replicas (R copies of the pipeline on their own devices, the micro-batches dealt to them in turn,
as `cluster.runtime.RayRunner(replicas=R)` runs them), each copy takes ceil(M / R) of them: the latency
is the critical path plus (ceil(M / R) - 1) bottleneck stages, the throughput M x micro-batch /
((ceil(M / R) + K - 1) x bottleneck).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from decomp.errors import InvalidPlanError

__all__ = ["PipelineTimes", "pipeline_times"]


@dataclass(frozen=True)
class PipelineTimes:
    """What M micro-batches through K parts take (seconds, samples per second)."""

    stage_s: tuple[float, ...]  # per part and micro-batch: compute + received + runtime
    bottleneck_s: float  # the slowest stage
    latency_s: float  # one batch of M micro-batches, end to end
    throughput: float  # samples per second, pipelined (0 when no stage takes time)
    bubble: float  # (K - 1) / (M + K - 1)


def pipeline_times(
    compute_s: Sequence[float],
    runtime_s: Sequence[float],
    received_s: Sequence[float],
    edge_s: Mapping[tuple[int, int], float],
    micro_batches: int,
    micro_batch: int,
    replicas: int = 1,
) -> PipelineTimes:
    """Pipelined times of `micro_batches` micro-batches of `micro_batch` samples through the parts: per
    part k its compute, runtime and receive seconds per micro-batch; `edge_s[p, q]`: seconds to send part
    p's outputs to part q (the DAG of parts); `replicas` copies of the pipeline sharing the micro-batches."""
    if replicas < 1:
        raise InvalidPlanError(f"replicas must be >= 1, got {replicas}")
    k = len(compute_s)
    stage = [c + r + o for c, r, o in zip(compute_s, received_s, runtime_s, strict=True)]
    bottleneck = max(stage)
    critical = _critical_path(compute_s, runtime_s, edge_s)
    m = -(-micro_batches // replicas)  # micro-batches per copy
    return PipelineTimes(
        stage_s=tuple(stage),
        bottleneck_s=bottleneck,
        latency_s=critical + (m - 1) * bottleneck,
        throughput=micro_batches * micro_batch / ((m + k - 1) * bottleneck) if bottleneck > 0 else 0.0,
        bubble=(k - 1) / (m + k - 1),
    )


def _critical_path(
    compute_s: Sequence[float], runtime_s: Sequence[float], edge_s: Mapping[tuple[int, int], float]
) -> float:
    """Finish time of the last part for one micro-batch through the DAG of parts."""
    k = len(compute_s)
    preds: list[list[int]] = [[] for _ in range(k)]
    for p, q in edge_s:
        preds[q].append(p)
    finish: dict[int, float] = {}
    pending = list(range(k))
    while pending:
        ready = [q for q in pending if all(p in finish for p in preds[q])]
        if not ready:
            raise InvalidPlanError("the parts form a cycle: no order runs them; repair the partition plan")
        for q in ready:
            start = max((finish[p] + edge_s[p, q] for p in preds[q]), default=0.0)
            finish[q] = start + compute_s[q] + runtime_s[q]
        pending = [q for q in pending if q not in finish]
    return max(finish.values())
