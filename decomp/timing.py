"""Measured time of every op of a traced model, run in place (in a whole forward pass, so caches and
memory traffic are those the op sees in the real model).

The node names are those of `build_graph` on the same trace (same model, inputs, tracer and leaf
modules), so the times can be put on the graph (`annotate_op_times`) and used where MACs alone
misjudge time, e.g. `StageCost(measured=True)` for a pipeline split balanced in wall time.

On a GPU, kernels run asynchronously: the device is synchronised before and after each op's call, so
an op's time is its kernels' time, not the time to launch them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from decomp.errors import GraphError
from decomp.graph import ModelGraph
from decomp.tracing import trace

__all__ = ["annotate_op_times", "device_sync", "node_times", "op_times"]


class _Timed(fx.Interpreter):
    """Runs the graph and adds the wall time of each node's call (not the interpreter's bookkeeping
    around it) to `seconds[node]`."""

    def __init__(self, gm: fx.GraphModule, sync: Callable[[], None] | None = None) -> None:
        super().__init__(gm)
        self.seconds: dict[str, list[float]] = {n.name: [] for n in gm.graph.nodes}
        self.sync = sync  # waits for the device's queued work (a GPU's), or None on a CPU

    def run_node(self, n: fx.Node) -> Any:
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            call = getattr(self, n.op)
            if self.sync is not None:
                self.sync()
            start = time.perf_counter()
            out = call(n.target, args, kwargs)
            if self.sync is not None:
                self.sync()
            self.seconds[n.name].append(time.perf_counter() - start)
        return out


def device_sync(gm: nn.Module, inputs: Sequence[Any]) -> Callable[[], None] | None:
    """`torch.cuda.synchronize` when `gm`'s parameters, buffers or `inputs` are on a CUDA device, else None."""
    tensors = [*gm.parameters(), *gm.buffers(), *(x for x in inputs if isinstance(x, torch.Tensor))]
    return torch.cuda.synchronize if any(t.is_cuda for t in tensors) else None


def node_times(
    gm: fx.GraphModule,
    inputs: tuple[Any, ...],
    repeats: int = 5,
    warmup: int = 2,
    threads: int | None = None,
    stat: str = "median",
) -> dict[str, float]:
    """Seconds of every node of `gm` over `repeats` runs on `inputs` after `warmup` ones: the median, or
    with `stat='min'` the least (what the op takes when nothing else on the machine disturbs it)."""
    if stat not in ("median", "min"):
        raise ValueError(f"stat must be 'median' or 'min', got {stat!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        timed = _Timed(gm, device_sync(gm, inputs))
        with torch.inference_mode():
            for _ in range(warmup):
                timed.run(*inputs)
            timed.seconds = {name: [] for name in timed.seconds}
            for _ in range(repeats):
                timed.run(*inputs)
    finally:
        torch.set_num_threads(before)
    reduce = statistics.median if stat == "median" else min
    return {name: reduce(s) for name, s in timed.seconds.items() if s}


def op_times(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    tracer: str = "fx",
    leaf_modules: Sequence[str | type] = (),
    repeats: int = 5,
    warmup: int = 2,
    threads: int | None = None,
) -> dict[str, float]:
    """Median seconds of every op (fx node name -> seconds) over `repeats` forward passes on
    `example_inputs` after `warmup` unmeasured ones, with `threads` torch threads (default: as set)."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    gm = trace(model, inputs, tracer=tracer, leaf_modules=leaf_modules)
    return node_times(gm, inputs, repeats, warmup, threads)


def annotate_op_times(graph: ModelGraph, times: dict[str, float]) -> ModelGraph:
    """Set node attribute `seconds` on every op of `graph` from `op_times` of the same trace; returns
    the graph. Ops of the graph that `times` lacks mean the two come from different traces: an error."""
    missing = [n for n in graph.compute_nodes() if n not in times]
    if missing:
        raise GraphError(
            f"{len(missing)} op(s) of the graph have no measured time (e.g. {', '.join(missing[:3])}); "
            "measure op_times on the same model, inputs, tracer and leaf modules the graph was built from"
        )
    for n in graph.nx.nodes:
        if n in times:
            graph.nx.nodes[n]["seconds"] = float(times[n])
    return graph
