"""Run a partitioned model: one Ray actor per part, or all parts in this process.

`RayRunner` places each part on its own actor (a GPU each where the cluster has GPUs, else CPU with
its own thread count) and pipelines micro-batches: for every micro-batch the driver submits one call
per part, passing the object refs of earlier parts' outputs straight to the actors that read them, so
tensors go from actor to actor without a driver round trip, and the parts work on different
micro-batches at once. Outputs come back in submission order; `max_in_flight` bounds the micro-batches
submitted but not yet collected. Parts are stateless, so an actor that dies is restarted and its
unfinished calls are retried (`max_restarts`, Ray's `max_task_retries`).

Between parts, tensors travel by the runner's `transport`: the object store (CPU tensors as numpy arrays,
`to_wire`), or Ray Direct Transport, where a part's outputs stay where it made them (on its GPU) and go to
the parts that read them by NCCL between GPU parts or gloo between CPU parts, through a collective group
of the parts' actors. A part whose outputs the caller collects (the model's outputs) or that feeds parts of
both kinds returns them through the object store; `RayRunner.transports` says which each part's outputs took.
With a direct transport a dead worker ends the run (a restarted actor would not be in the group).

`LocalRunner` runs the same layout in this process, one part after another. `cluster.runtime` measures
either and runs export folders.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError, RayTaskError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cluster.connect import cluster_cpus, cluster_gpus, connect
from decomp.errors import DecompError
from decomp.partition.export import load_part
from decomp.partition.manifest import read_manifest
from decomp.partition.parts import PartsLayout, as_tuple, run_local

__all__ = [
    "PLACEMENTS",
    "TRANSPORTS",
    "LocalRunner",
    "Loader",
    "RayRunner",
    "RuntimeFailure",
    "export_loaders",
    "from_wire",
    "loaders_for",
    "to_wire",
]

Loader = Callable[[], Callable[..., Any]]

TRANSPORTS = ("auto", "nccl", "gloo", "object-store")


class RuntimeFailure(DecompError):
    """A part failed or its worker died beyond its restarts."""


def _given(module: Callable[..., Any]) -> Callable[..., Any]:
    return module


def loaders_for(modules: Sequence[Callable[..., Any]]) -> list[Loader]:
    """Loaders that hand over modules already in memory (they travel to the actors pickled)."""
    return [functools.partial(_given, m) for m in modules]


def export_loaders(folder: str | os.PathLike[str]) -> list[Loader]:
    """Loaders that read each part of an export folder where it runs (only that part's file, checksum
    checked), so a worker never receives the weights through the driver."""
    manifest = read_manifest(folder)
    return [functools.partial(load_part, os.fspath(folder), k) for k in range(len(manifest.parts))]


class _Part:
    """What runs inside a worker: load the part once (by `load`, or at the first call: an actor Ray restarted
    loads again), then call it; counts busy time. Loading outside the constructor lets a load error (a changed
    or missing part file) reach the caller as itself, not as an actor that died."""

    def __init__(self, name: str, loader: Loader, threads: int, device: str, sparse: bool = False) -> None:
        torch.set_num_threads(max(1, threads))
        self.name, self.device, self.loader = name, torch.device(device), loader
        self.module: Any = None
        self.busy, self.calls = 0.0, 0
        self.sparse, self.bytes_out = sparse, 0  # outputs sent as `ChannelSparse` where they can; their bytes

    def load(self) -> None:
        if self.module is None:
            module = self.loader()
            if self.device.type != "cpu" and hasattr(module, "to"):
                module = module.to(self.device)
            self.module = module

    def run(self, *tensors: Any) -> Any:
        out = tuple(o.cpu() if isinstance(o, torch.Tensor) else o for o in self.call(*tensors))
        return out if len(out) > 1 else out[0]

    def call(self, *tensors: Any) -> tuple[Any, ...]:
        """The part's outputs on its own device, as a tuple."""
        self.load()
        start = time.perf_counter()
        with torch.inference_mode():
            args = [t.to(self.device) if isinstance(t, torch.Tensor) else t for t in tensors]
            out = as_tuple(self.module(*args))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # busy time is the kernels' time, not their launch's
        self.busy += time.perf_counter() - start
        self.calls += 1
        return out

    def stats(self) -> dict[str, Any]:
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        return {
            "busy_s": self.busy,
            "calls": self.calls,
            "bytes_out": self.bytes_out,  # of the outputs sent through the object store
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
            "node_id": node,
        }


# dtypes numpy holds bit for bit (bfloat16 and the float8 kinds have no numpy twin and travel as tensors)
_WIRE_DTYPES = frozenset(
    {
        torch.float16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    }
)


@dataclass(frozen=True)
class ChannelSparse:
    """An activation sent as its channels (dim 1) that are not all zero over the batch, and their indices:
    what `to_wire(..., sparse=True)` makes of a tensor whose channels are at least half zero (a channel-gated
    model's closed channels), so those never travel. `from_wire` gives back the dense tensor, zeros included."""

    values: np.ndarray  # (batch, kept channels, ...)
    channels: np.ndarray  # indices of the kept channels
    width: int  # channels of the dense tensor

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.channels.nbytes

    def dense(self) -> torch.Tensor:
        values = torch.from_numpy(np.array(self.values))
        out = values.new_zeros((values.shape[0], self.width, *values.shape[2:]))
        return out.index_copy_(1, torch.from_numpy(self.channels), values)


def to_wire(value: Any, sparse: bool = False) -> Any:
    """A CPU tensor as a numpy array for the object store. Ray serialises numpy arrays out of band (one
    copy into shared memory, read in place by the receiver) but torch tensors through pickle, copied
    several times: a 3 MB activation takes about twice as long per actor hop (14.6 vs 8.2 ms measured
    here), time a pipeline's stages lose on a machine whose cores they fill. With `sparse`, a floating
    tensor of 3 or more dims whose channels are at least half zero goes as a `ChannelSparse`. Other values
    pass as they are."""
    if isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.dtype in _WIRE_DTYPES:
        value = value.detach().contiguous()
        if sparse and value.dim() >= 3 and value.is_floating_point() and value.shape[0] > 0:
            kept = value.flatten(2).ne(0).any(2).any(0).nonzero().flatten()
            if 2 * kept.numel() <= value.shape[1]:
                return ChannelSparse(value[:, kept].contiguous().numpy(), kept.numpy(), value.shape[1])
        return value.numpy()
    return value


def wire_bytes(value: Any) -> int:
    """Bytes of the tensors in what `to_wire` made."""
    if isinstance(value, ChannelSparse):
        return value.nbytes
    return value.nbytes if isinstance(value, np.ndarray) else 0


def from_wire(value: Any, copy: bool = False) -> Any:
    """Undo `to_wire`: a numpy array becomes a tensor over the same memory (read-only memory of the
    object store: parts never change their inputs in place, `split_model` makes them copy what they
    would), or over a copy with `copy` (what is handed to the caller, who may)."""
    if isinstance(value, ChannelSparse):
        return value.dense()
    if not isinstance(value, np.ndarray):
        return value
    if copy:
        return torch.from_numpy(np.array(value))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(value)


def exit_filter(out: Sequence[Any], exit_at: int, keep_at: Sequence[int], threshold: float) -> tuple[Any, ...]:
    """From part 0's outputs: (exit logits, mask of the inputs that go on, bytes one input's rows of the
    `keep_at` outputs take, each of those outputs cut to the inputs that go on)."""
    logits = out[exit_at]
    go_on = logits.float().softmax(-1).max(-1).values < threshold
    row_bytes = sum(out[i][0].numel() * out[i].element_size() for i in keep_at)
    return (logits, go_on, row_bytes, *(out[i][go_on] for i in keep_at))


class _RemotePart(_Part):
    """A part in a Ray actor: tensors arrive and leave as numpy arrays (`to_wire`) through the object store,
    or, by `run_direct`, as one tuple of tensors on the part's device (Ray Direct Transport)."""

    def run(self, *tensors: Any) -> Any:
        out = super().run(*(from_wire(t) for t in tensors))
        return tuple(self._send(o) for o in out) if isinstance(out, tuple) else self._send(out)

    def _send(self, value: Any) -> Any:
        wired = to_wire(value.cpu() if isinstance(value, torch.Tensor) else value, self.sparse)
        self.bytes_out += wire_bytes(wired)
        return wired

    def run_exit(self, exit_at: int, keep_at: tuple[int, ...], threshold: float, *tensors: Any) -> tuple[Any, ...]:
        """Run the part and keep, of the outputs `keep_at`, only the rows of inputs whose exit logits (output
        `exit_at`) are not confident enough to stop here (`exit_filter`); one return each."""
        out = self.call(*(from_wire(t) for t in tensors))
        return tuple(self._send(v) for v in exit_filter(out, exit_at, keep_at, threshold))

    def run_direct(self, picks: tuple[tuple[int, int | None], ...], wire: bool, *values: Any) -> tuple[Any, ...]:
        """Inputs are `values[a]` or element `e` of the tuple `values[a]` (another part's outputs), per (a, e)
        in `picks`; returns all outputs as one tuple: tensors on the part's device for a direct transport, or
        with `wire` numpy arrays for the object store."""
        tensors = [from_wire(values[a] if e is None else values[a][e]) for a, e in picks]
        out = self.call(*tensors)
        return tuple(self._send(o) for o in out) if wire else out


_PartActor = ray.remote(_RemotePart)
_DirectPartActor = ray.remote(enable_tensor_transport=True)(_RemotePart)


class LocalRunner:
    """All parts in this process, one after another (`threads` torch threads)."""

    def __init__(self, layout: PartsLayout, loaders: Sequence[Loader], threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.layout = layout
        self.parts = [
            _Part(p.name, loader, torch.get_num_threads(), "cpu")
            for p, loader in zip(layout.parts, loaders, strict=True)
        ]
        for part in self.parts:
            part.load()

    def map(self, batches: Iterable[Sequence[torch.Tensor]]) -> Iterator[tuple[Any, ...]]:
        calls = [part.run for part in self.parts]
        for inputs in batches:
            yield run_local(self.layout, calls, *inputs)

    def stats(self) -> list[dict[str, Any]]:
        return [p.stats() for p in self.parts]

    def close(self) -> None:
        self.parts = []


class RayRunner:
    """One Ray actor per part; see the module docstring. `threads`: torch threads per CPU part; `transport`:
    one of `TRANSPORTS` (`auto`: NCCL between GPU parts, the object store between CPU parts); `replicas`
    copies of the whole pipeline run side by side, micro-batches dealt to them in turn; `placement`: how
    each copy's placement group (one bundle per part) spreads over nodes (`PLACEMENTS`); `sparse`: activations
    sent through the object store with at least half their channels zero travel as `ChannelSparse` (the
    closed channels of a channel-gated model are not sent)."""

    def __init__(
        self,
        layout: PartsLayout,
        loaders: Sequence[Loader],
        threads: int = 1,
        devices: Sequence[str] = (),
        max_in_flight: int | None = None,
        max_restarts: int = 2,
        transport: str = "auto",
        replicas: int = 1,
        placement: str = "PACK",
        wait_s: float = 30.0,
        sparse: bool = False,
    ) -> None:
        if len(loaders) != len(layout.parts):
            raise DecompError(f"{len(loaders)} loaders for {len(layout.parts)} parts")
        if transport not in TRANSPORTS:
            raise DecompError(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")
        if placement not in PLACEMENTS:
            raise DecompError(f"unknown placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if replicas < 1:
            raise DecompError(f"replicas must be >= 1, got {replicas}")
        connect()
        self.layout, self.replicas = layout, replicas
        actors_wanted = len(layout.parts) * replicas
        self.max_in_flight = max_in_flight or 2 * actors_wanted
        gpus = cluster_gpus()
        cpus = _free_cpus(min(float(threads) * actors_wanted, cluster_cpus()), wait_s=0.0 if gpus else 15.0)
        if not gpus and cpus <= 0:
            raise RuntimeFailure(
                f"the Ray cluster has no free CPU for {actors_wanted} part(s) ({cluster_cpus():g} CPUs, all "
                "held by other actors); close other runners or add nodes"
            )
        # ask for no more CPU than is free, or the last actors would wait forever for a slot
        cpu_share = max(0.001, min(float(threads), cpus / actors_wanted))  # a bundle may not be empty
        self.devices, nodes = [], []
        for k, part in enumerate(layout.parts):
            node, _, hint = (devices[k] if devices else part.device).rpartition("/")
            on_gpu = gpus > 0 and not hint.startswith("cpu")
            self.devices.append((hint if hint.startswith("cuda") else "cuda") if on_gpu else "cpu")
            nodes.append(node)
        # NCCL connects processes on distinct GPUs; parts that share a GPU (fewer GPUs than parts) cannot use it
        shared = 0 < gpus < actors_wanted
        self.transports = _transports(layout, self.devices, transport, shared_gpus=shared)
        self.direct = any(t != "object-store" for t in self.transports)
        actor_class = _DirectPartActor if self.direct else _PartActor
        restarts = 0 if self.direct else max_restarts  # a restarted actor is not in the collective group
        bundles = []
        for device, node in zip(self.devices, nodes, strict=True):
            bundle = {"GPU": min(1.0, gpus / actors_wanted)} if device.startswith("cuda") else {"CPU": cpu_share}
            if node:
                bundle[node_resource(node)] = 0.001
            bundles.append(bundle)
        self._copies: list[_Copy] = []
        self._turn, self._turn_lock = 0, threading.Lock()
        try:
            for r in range(replicas):
                group = _placed(bundles, placement, wait_s, f"replica {r}" if replicas > 1 else "")
                self._copies.append(_Copy(group, [], []))
                for k, (part, loader, device) in enumerate(zip(layout.parts, loaders, self.devices, strict=True)):
                    on_gpu = device.startswith("cuda")
                    options = {"num_gpus": bundles[k]["GPU"]} if on_gpu else {"num_cpus": cpu_share}
                    strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=k)
                    actor = actor_class.options(
                        max_restarts=restarts, max_task_retries=restarts, scheduling_strategy=strategy, **options
                    ).remote(part.name, loader, threads, device, sparse)
                    self._copies[-1].actors.append(actor)
                self._copies[-1].groups.extend(self._collective_groups(self._copies[-1].actors))
            self.get([a.load.remote() for a in self.actors])  # load errors now, by name, not at the first batch
        except BaseException:
            self.close()
            raise

    @property
    def actors(self) -> list[Any]:
        """Every part's actor, replica after replica."""
        return [a for copy in self._copies for a in copy.actors]

    def _collective_groups(self, actors: list[Any]) -> list[Any]:
        groups = []
        for kind, backend in (("nccl", "nccl"), ("gloo", "torch_gloo")):
            if kind in self.transports:
                from ray.experimental.collective import create_collective_group

                on_gpu = kind == "nccl"
                members = [a for a, d in zip(actors, self.devices, strict=True) if d.startswith("cuda") == on_gpu]
                groups.append(create_collective_group(members, backend=backend))
        return groups

    def submit(self, inputs: Sequence[torch.Tensor]) -> list[tuple[ray.ObjectRef, int | None]]:
        """Queue one micro-batch on every part of the next replica; returns where the model outputs will be:
        (ref, element of the tuple it holds, or None where it holds the output itself)."""
        if len(inputs) != len(self.layout.inputs):
            raise DecompError(
                f"the model takes {len(self.layout.inputs)} input(s) ({', '.join(self.layout.inputs)}), "
                f"got {len(inputs)}"
            )
        with self._turn_lock:  # `serve` submits from more than one thread
            copy = self._copies[self._turn % len(self._copies)]
            self._turn += 1
        # name -> (ref, element of the tuple it holds, or None where the ref holds the value itself)
        env: dict[str, tuple[ray.ObjectRef, int | None]] = {
            n: (ray.put(to_wire(t)), None) for n, t in zip(self.layout.inputs, inputs, strict=True)
        }
        for part, actor, transport in zip(self.layout.parts, copy.actors, self.transports, strict=True):
            if not self.direct:  # the object store only: one return per output
                refs = actor.run.options(num_returns=len(part.outputs)).remote(*(env[n][0] for n in part.inputs))
                env.update((n, (r, None)) for n, r in zip(part.outputs, as_list(refs, len(part.outputs)), strict=True))
                continue
            values: list[ray.ObjectRef] = []
            picks = []
            for n in part.inputs:
                ref, element = env[n]
                if ref not in values:
                    values.append(ref)
                picks.append((values.index(ref), element))
            method = actor.run_direct
            if transport != "object-store":
                method = method.options(tensor_transport=transport)
            bundle = method.remote(tuple(picks), transport == "object-store", *values)
            env.update((n, (bundle, e)) for e, n in enumerate(part.outputs))
        return [env[n] for n in self.layout.outputs]

    def map(self, batches: Iterable[Sequence[torch.Tensor]]) -> Iterator[tuple[Any, ...]]:
        """Outputs of each micro-batch, in order, with at most `max_in_flight` submitted and uncollected."""
        pending: deque[list[ray.ObjectRef]] = deque()

        def collect() -> tuple[Any, ...]:  # the caller's own copies, which it may change
            outputs = pending.popleft()
            bundles = list(dict.fromkeys(ref for ref, _ in outputs))
            got = dict(zip(bundles, self.get(bundles), strict=True))
            return tuple(_own(got[r] if e is None else got[r][e]) for r, e in outputs)

        for inputs in batches:
            pending.append(self.submit(inputs))
            if len(pending) >= self.max_in_flight:
                yield collect()
        while pending:
            yield collect()

    def stats(self) -> list[dict[str, Any]]:
        """Per part of each replica (replica after replica): busy time, calls, device and node it ran on."""
        names = _node_names()
        got = self.get([a.stats.remote() for a in self.actors])
        devices = self.devices * len(self._copies)
        return [
            {**s, "device": d, "node": names.get(s.get("node_id", ""), s.get("node_id", ""))}
            for s, d in zip(got, devices, strict=True)
        ]

    def close(self) -> None:
        from ray.experimental.collective import destroy_collective_group

        for copy in self._copies:
            for group in copy.groups:
                destroy_collective_group(group)
            for actor in copy.actors:
                ray.kill(actor)
            remove_placement_group(copy.placement)
        self._copies = []

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, refs: list[ray.ObjectRef]) -> list[Any]:
        """`ray.get`, a part's failure raised as itself (a `DecompError`) or as a `RuntimeFailure` naming it."""
        try:
            return ray.get(refs)
        except RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else None
            if isinstance(cause, DecompError):
                raise cause from None
            if isinstance(cause, RayActorError):  # a later part's call failed because an earlier worker died
                raise _died(cause) from None
            raise RuntimeFailure(f"a part failed on its worker: {cause or err}") from None
        except RayActorError as err:
            raise _died(err) from None


@dataclass
class _Copy:
    """One replica of the pipeline: its placement group, its actors (one per part) and collective groups."""

    placement: Any
    actors: list[Any]
    groups: list[Any]


PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
NODE_RESOURCE = "decomp-node-"  # a node named NAME in a plan is the Ray node started with resource decomp-node-NAME


def node_resource(node: str) -> str:
    """The Ray resource that marks the node a plan names: Ray's own `node:IP` where the name is an address, else
    the custom resource `decomp-node-NAME` (`ray start --resources '{"decomp-node-NAME": 1}'`)."""
    return f"node:{node}" if _is_address(node) else NODE_RESOURCE + node


def _is_address(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _node_names() -> dict[str, str]:
    """Ray node id -> its decomp name (a `decomp-node-NAME` resource) or address, for reports."""
    out = {}
    for node in ray.nodes():
        named = [r[len(NODE_RESOURCE) :] for r in node.get("Resources", {}) if r.startswith(NODE_RESOURCE)]
        out[node["NodeID"]] = named[0] if named else node.get("NodeManagerAddress", "")
    return out


def _placed(bundles: list[dict[str, float]], strategy: str, wait_s: float, label: str) -> Any:
    """A placement group of `bundles`, ready; or a `RuntimeFailure` naming what the cluster lacks."""
    group = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([group.ready()], timeout=wait_s)
    if ready:
        return group
    remove_placement_group(group)
    total = ray.cluster_resources()
    missing = sorted({key for b in bundles for key in b if key not in total})
    need: dict[str, float] = {}
    for bundle in bundles:
        for key, amount in bundle.items():
            need[key] = need.get(key, 0.0) + amount
    names = _node_names()
    nodes = "; ".join(
        f"{names.get(n['NodeID'], '?')}: " + ", ".join(f"{k} {n['Resources'].get(k, 0):g}" for k in need)
        for n in ray.nodes()
        if n.get("Alive")
    )
    wanted = ", ".join(f"{k} {v:g}" for k, v in need.items())
    why = (
        f"no node has {', '.join(missing)} (start the node a plan names with ray start --resources "
        "'{\"decomp-node-NAME\": 1}', or name it by its address)"
        if missing
        else f"the parts need {wanted} ({strategy}{', on one node' if 'PACK' in strategy else ''}); the nodes "
        f"have {nodes} (other actors may hold some)"
    )
    where = f" for {label}" if label else ""
    raise RuntimeFailure(f"the cluster cannot hold the plan's parts{where} within {wait_s:g} s: {why}")


def as_list(refs: Any, count: int) -> list[Any]:
    """Ray's return of a call with `count` returns as a list (one return comes bare)."""
    return list(refs) if count > 1 else [refs]


def _own(value: Any) -> Any:
    """A returned value as the caller's own CPU tensor (a copy it may change)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    return from_wire(value, copy=True)


def _transports(layout: PartsLayout, devices: Sequence[str], asked: str, shared_gpus: bool = False) -> list[str]:
    """How each part's outputs travel: by `asked` (resolved where `auto`) when every part that reads them runs
    on the kind of device the transport serves (GPUs for NCCL, CPUs for gloo) as the part does; through the
    object store where the caller collects one of them, where they feed both kinds or where nothing reads them.
    NCCL needs a GPU per part (`shared_gpus`: parts share GPUs, so it is refused, and `auto` does without).
    An asked transport that no part can use is an error."""
    if shared_gpus and asked == "nccl":
        raise DecompError(
            "transport nccl connects parts on distinct GPUs, and the cluster has fewer GPUs than parts (they share "
            "GPUs); use --transport auto (the object store) or more GPUs"
        )
    readers: dict[int, set[int | None]] = {}
    for source, reader, _ in layout.edges():
        if source is not None:
            readers.setdefault(source, set()).add(reader)
    out = []
    for k, device in enumerate(devices):
        on_gpu = device.startswith("cuda")
        kind = ("nccl" if on_gpu and not shared_gpus else "object-store") if asked == "auto" else asked
        serves = kind != "object-store" and (kind == "nccl") == on_gpu
        reads = readers.get(k, set())
        direct = serves and reads and None not in reads and all(devices[r].startswith("cuda") == on_gpu for r in reads)
        out.append(kind if direct else "object-store")
    if asked in ("nccl", "gloo") and asked not in out and len(layout.parts) > 1:
        need = "GPU" if asked == "nccl" else "CPU"
        raise DecompError(
            f"transport {asked} carries tensors between {need} parts, and no part here sends its outputs to another "
            f"{need} part only (devices: {', '.join(devices)}; outputs the caller collects go through the object "
            "store); use --transport auto"
        )
    return out


def _free_cpus(wanted: float, wait_s: float = 15.0) -> float:
    """Free CPUs in the cluster, waiting up to `wait_s` for `wanted` of them (actors just killed give
    theirs back a moment later)."""
    deadline = time.monotonic() + wait_s
    while True:
        free = float(ray.available_resources().get("CPU", 0.0))
        if free >= wanted or time.monotonic() > deadline:
            return free
        time.sleep(0.1)


def _died(err: BaseException) -> RuntimeFailure:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return RuntimeFailure(
        f"a part's worker died and could not be restarted ({first}); check the worker logs "
        "(memory, a crashed library) and run again"
    )
