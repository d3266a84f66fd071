"""Per-op latency lookup tables: the ops of a graph profiled on the device the profiler runs on, keyed
by the op's signature, cached on disk.

Two ways to time an op (`profile_ops(method=...)`): `in_place` (the default) times each op's call
inside whole forward passes, so it pays what it pays in the model (inputs and weights coming from
main memory, not from a cache its own previous repeat warmed); `isolated` times each op alone on its
recorded inputs with `torch.utils.benchmark`. Isolated times miss that traffic and under-predict
convolutional networks by 15-30% (a `Calibration` with its bytes term recovers part of it); see
BENCHMARKS.md for both measured against real forward passes.

An op's signature is what decides its cost and can be read off the costed graph alone: what it does
(module class, or function / ATen op), the shapes of the tensors it reads and makes, dtype, and its
parameter and MAC counts (which pin down kernel size, groups and the like). Two ops with one
signature cost the same, wherever they sit and whichever model they come from, so a table built on
one model serves another, and a search re-uses it across thousands of candidates. A table belongs to
one device key: device kind, torch threads and torch version; machines of the same kind share it.
"""

from __future__ import annotations

import functools
import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from decomp.build import graph_from_module
from decomp.errors import GraphError
from decomp.files import write_atomically
from decomp.graph import ModelGraph
from decomp.timing import node_times
from decomp.tracing import trace

__all__ = ["FORMAT", "METHODS", "OpTable", "default_table_path", "device_key", "op_signature", "profile_ops"]

METHODS = ("in_place", "isolated")

FORMAT = "decomp.op_table/1"


def op_signature(graph: ModelGraph, node: str) -> str:
    """The key of `node`'s cost in an op table (see the module docstring)."""
    return graph.derived("op_signatures", _signatures)[node]


def _signatures(graph: ModelGraph) -> dict[str, str]:
    return {n: _signature(graph, n) for n in graph.compute_nodes()}


def _signature(graph: ModelGraph, node: str) -> str:
    d = graph[node]
    what = d["kind"] if d["op"] == "call_module" else f"{d['kind']}:{d['target']}"
    key = (
        what,
        tuple(_frozen(e.get("shape")) for e in graph.nx.pred[node].values()),
        _frozen(d.get("shape")),
        _frozen(d.get("dtype")),
        d.get("params", 0),
        d.get("macs", 0),
    )
    try:
        return _encoded(key)
    except TypeError:  # something unhashable left inside
        return json.dumps(key)


def _frozen(value: Any) -> Any:
    """A shape (a list of ints, or a list of those for several outputs) as a tuple: hashable, and JSON
    writes it as the same list."""
    if not isinstance(value, list):
        return value
    return tuple(_frozen(v) for v in value) if value and isinstance(value[0], list) else tuple(value)


@functools.lru_cache(maxsize=1 << 16)
def _encoded(key: tuple) -> str:
    # the ops of one model, and of its pruned candidates, share many signatures: each is encoded once
    return json.dumps(key)


def device_key(device: str | torch.device = "cpu", threads: int | None = None) -> str:
    """The machine kind an op table was measured on: device name, torch threads, torch version."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return f"{device.type}:{name}|threads={threads or torch.get_num_threads()}|torch={torch.__version__}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_table_path(key: str) -> Path:
    """Where the table of a device key lives by default: $DECOMP_CACHE (or ~/.cache/decomp)/op_tables/."""
    root = Path(os.environ.get("DECOMP_CACHE", Path.home() / ".cache" / "decomp"))
    slug = "".join(c if c.isalnum() or c in "-._" else "_" for c in key)[:150]
    return root / "op_tables" / f"{slug}.json"


@dataclass
class OpTable:
    """Measured seconds per op signature for one device key."""

    device: str
    entries: dict[str, float] = field(default_factory=dict)
    _learned: Any = field(default=None, init=False, repr=False, compare=False)

    def op_model(self) -> Any:
        """The `decomp.latency.opmodel.OpModel` fitted on this table's entries (refitted once the entries
        changed), or None while the table is too small to learn from (`opmodel.MIN_ENTRIES`)."""
        from decomp.latency.opmodel import MIN_ENTRIES, OpModel

        if len(self.entries) < MIN_ENTRIES:
            return None
        key = (len(self.entries), sum(self.entries.values()))
        if self._learned is None or self._learned[0] != key:
            self._learned = (key, OpModel.fit(self))
        return self._learned[1]

    def get(self, signature: str) -> float | None:
        return self.entries.get(signature)

    def __len__(self) -> int:
        return len(self.entries)

    def merge(self, other: OpTable) -> OpTable:
        """Take `other`'s entries (same device key), keeping the lesser time where both have one: tables
        profiled at different moments on a shared machine, or on several machines of one kind, combine
        into times nearer the undisturbed ones. Returns this table."""
        if other.device != self.device:
            raise GraphError(f"cannot merge a table of {other.device!r} into one of {self.device!r}")
        for sig, seconds in other.entries.items():
            self.entries[sig] = min(seconds, self.entries.get(sig, seconds))
        return self

    def missing(self, graph: ModelGraph) -> list[str]:
        """Compute nodes of `graph` whose signature the table lacks."""
        return [n for n in graph.compute_nodes() if op_signature(graph, n) not in self.entries]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "device": self.device, "entries": self.entries}

    @classmethod
    def from_json(cls, data: Any, where: str = "op table") -> OpTable:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise GraphError(f"{where} is not a {FORMAT} table; delete it and profile again")
        entries = data.get("entries")
        if not isinstance(entries, dict) or not all(isinstance(v, (int, float)) for v in entries.values()):
            raise GraphError(f"{where} has damaged entries; delete it and profile again")
        return cls(str(data.get("device", "")), {str(k): float(v) for k, v in entries.items()})

    def save(self, path: str | Path) -> Path:
        """Write atomically (a temporary file renamed into place)."""
        return write_atomically(path, json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> OpTable:
        """The table at `path`; an empty one for `device` if there is no file yet. A file measured on
        another device key is an error (its times would be wrong here)."""
        path = Path(path)
        if not path.exists():
            if device is None:
                raise GraphError(f"no op table at {path}; profile one first (decomp profile MODEL)")
            return cls(device)
        try:
            table = cls.from_json(json.loads(path.read_text()), str(path))
        except (OSError, json.JSONDecodeError) as err:
            raise GraphError(f"cannot read op table {path}: {err}; delete it and profile again") from None
        if device is not None and table.device != device:
            raise GraphError(
                f"op table {path} was measured on {table.device!r}, not {device!r}; use a table of this "
                "device kind (or another path) and profile again"
            )
        return table


class _Capture(fx.Interpreter):
    """Runs the graph once and keeps, for chosen nodes, a callable that repeats the op on its inputs."""

    def __init__(self, gm: fx.GraphModule, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.calls: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.name in self.wanted:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            fn = self._callable(n, args)
            self.calls[n.name] = (fn, _cloned(args), _cloned(kwargs))
        return super().run_node(n)

    def _callable(self, n: fx.Node, args: Sequence[Any]) -> Any:
        if n.op == "call_module":
            return self.module.get_submodule(n.target)
        if n.op == "call_method":
            return lambda self_, *a, **k: getattr(self_, n.target)(*a, **k)
        return n.target


def _cloned(value: Any) -> Any:
    """Inputs kept for timing: detached copies, so in-place ops in the timing loop change nothing else."""
    return torch.utils._pytree.tree_map(lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v, value)


def profile_ops(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...] | torch.Tensor,
    table: OpTable,
    tracer: str = "fx",
    leaf_modules: Sequence[str | type] = (),
    threads: int | None = None,
    method: str = "in_place",
    min_run_time: float = 0.05,
    repeats: int = 10,
) -> tuple[ModelGraph, int]:
    """Time the ops of `model` whose signature `table` lacks and add them to `table`; returns the costed
    graph of the trace and the number of signatures added. `in_place`: the least over `repeats` forward
    passes of each op's call (ops sharing a signature averaged); `isolated`: each op alone on its
    recorded inputs, the median of `torch.utils.benchmark`'s `blocked_autorange(min_run_time)`."""
    if method not in METHODS:
        raise GraphError(f"unknown profiling method {method!r}; choose one of {', '.join(METHODS)}")
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    gm = trace(model, inputs, tracer=tracer, leaf_modules=leaf_modules)
    graph = graph_from_module(gm, name=type(model).__name__, tracer=tracer)
    todo: dict[str, list[str]] = {}  # signature -> nodes
    for n in graph.compute_nodes():
        sig = op_signature(graph, n)
        if sig not in table.entries:
            todo.setdefault(sig, []).append(n)
    if not todo:
        return graph, 0
    if method == "in_place":
        times = node_times(gm, inputs, repeats=repeats, warmup=2, threads=threads, stat="min")
        for sig, nodes in todo.items():
            table.entries[sig] = float(sum(times[n] for n in nodes) / len(nodes))
        return graph, len(todo)
    from torch.utils import benchmark  # here, not at the top: importing it warns about CUDA_HOME on CPU machines

    capture = _Capture(gm, {nodes[0] for nodes in todo.values()})
    with torch.inference_mode():
        capture.run(*inputs)
        for sig, nodes in todo.items():
            fn, args, kwargs = capture.calls[nodes[0]]
            timer = benchmark.Timer(
                stmt="fn(*args, **kwargs)",
                globals={"fn": fn, "args": args, "kwargs": kwargs},
                num_threads=threads or torch.get_num_threads(),
            )
            table.entries[sig] = float(timer.blocked_autorange(min_run_time=min_run_time).median)
    return graph, len(todo)
