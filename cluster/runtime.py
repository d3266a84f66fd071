"""Measure a partitioned model's runner (`cluster.runners`) and run export folders: throughput, latency and
each part's busy time (`RunReport`), inputs shaped as an export's manifest says, and the stage times a
pipeline split is tuned with.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cluster.runners import LocalRunner, RayRunner, export_loaders, loaders_for
from decomp.errors import DecompError, InputShapeError
from decomp.partition.manifest import Manifest, manifest_layout, read_manifest
from decomp.partition.split import SplitModel

__all__ = ["RunReport", "export_inputs", "measure", "priced_batch", "run_export", "split_batch", "stage_seconds"]


def split_batch(inputs: Sequence[torch.Tensor], micro_batches: int) -> list[list[torch.Tensor]]:
    """Cut every input along dim 0 into `micro_batches` chunks (as even as possible)."""
    size = inputs[0].shape[0]
    if not 1 <= micro_batches <= size:
        raise DecompError(f"micro-batches must be in 1..{size} (the batch size), got {micro_batches}")
    chunks = [t.tensor_split(micro_batches) for t in inputs]
    return [list(c) for c in zip(*chunks, strict=True)]


@dataclass(frozen=True)
class RunReport:
    """Throughput and latency of `batches` batches of `batch_size`, each cut into `micro_batches`."""

    runner: str
    parts: int
    batches: int
    batch_size: int
    micro_batches: int
    seconds: float
    throughput: float  # samples per second
    latency_median_s: float  # from submitting a batch's first micro-batch to collecting its last
    latency_max_s: float
    busy_s: tuple[float, ...]  # per part, during the measured batches
    busy_share: tuple[float, ...]  # busy / wall time
    devices: tuple[str, ...] = ()  # per part of each replica (replica after replica; so are busy_s, nodes)
    transports: tuple[str, ...] = ()  # per part, how its outputs travelled (`cluster.runners.TRANSPORTS`)
    nodes: tuple[str, ...] = ()  # per part of each replica, the Ray node it ran on (name or address)
    replicas: int = 1
    bytes_out: tuple[float, ...] = ()  # per part, bytes per sample its outputs took through the object store

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure(
    runner: LocalRunner | RayRunner,
    inputs: Sequence[torch.Tensor],
    batches: int,
    micro_batches: int = 1,
    warmup: int = 1,
    min_seconds: float = 0.0,
) -> tuple[RunReport, tuple[Any, ...]]:
    """Stream `batches` copies of `inputs` through `runner` (after `warmup` unmeasured ones), and more
    until `min_seconds` have passed (a fast model's short run is mostly noise); returns the report and
    the outputs of the last batch (micro-batch outputs concatenated along dim 0)."""
    chunks = split_batch(inputs, micro_batches)
    for _ in runner.map(chunks * warmup):
        pass
    before = runner.stats()
    busy_before = [s["busy_s"] for s in before]
    submitted: dict[int, float] = {}
    latencies: list[float] = []
    batch: list[Any] = []
    last: list[Any] = []

    def stream() -> Iterator[list[torch.Tensor]]:
        b = 0
        while b < batches or time.perf_counter() - start < min_seconds:
            for m, chunk in enumerate(chunks):
                if m == 0:
                    submitted[b] = time.perf_counter()
                yield chunk
            b += 1

    start = time.perf_counter()
    for i, out in enumerate(runner.map(stream())):
        b, m = divmod(i, micro_batches)
        batch.append(out)
        if m == micro_batches - 1:
            latencies.append(time.perf_counter() - submitted[b])
            last, batch = batch, []
    seconds = time.perf_counter() - start
    done = len(latencies)
    stats = runner.stats()
    busy = tuple(s["busy_s"] - b for s, b in zip(stats, busy_before, strict=True))
    outputs = tuple(
        torch.cat([o[j] for o in last]) if isinstance(last[0][j], torch.Tensor) else last[0][j]
        for j in range(len(last[0]))
    )
    report = RunReport(
        runner=type(runner).__name__,
        parts=len(runner.layout.parts),
        batches=done,
        batch_size=inputs[0].shape[0],
        micro_batches=micro_batches,
        seconds=seconds,
        throughput=done * inputs[0].shape[0] / seconds,
        latency_median_s=statistics.median(latencies),
        latency_max_s=max(latencies),
        busy_s=busy,
        busy_share=tuple(b / seconds for b in busy),
        devices=tuple(s.get("device", "cpu") for s in stats),
        transports=tuple(getattr(runner, "transports", ["in-process"] * len(runner.layout.parts))),
        nodes=tuple(s.get("node", "") for s in stats),
        replicas=getattr(runner, "replicas", 1),
        bytes_out=tuple(
            (s.get("bytes_out", 0) - b.get("bytes_out", 0)) / max(1, done * inputs[0].shape[0])
            for s, b in zip(stats, before, strict=True)
        ),
    )
    return report, outputs


def export_inputs(
    manifest: Manifest, batch_size: int | None = None, seed: int = 0, micro_batches: int = 1
) -> list[torch.Tensor]:
    """Random model inputs of the shapes and dtypes the manifest records, with the batch dimension set to
    `batch_size` (an export made for one batch size only accepts that one, or that many samples per each of
    `micro_batches` micro-batches). Integer inputs (token ids) are drawn from 0..1, valid for any embedding
    table."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for info in manifest.inputs:
        shape = list(info.shape)
        if batch_size is not None and shape and batch_size != shape[0]:
            if info.batch_dim != 0 and batch_size != shape[0] * micro_batches:
                raise InputShapeError(
                    f"this export takes input {info.name!r} with batch size {shape[0]} only (its graph fixes "
                    f"the batch); run it with --batch-size {shape[0]}, or {shape[0]} per micro-batch "
                    f"(--batch-size {shape[0] * max(2, micro_batches)} --micro-batches {max(2, micro_batches)})"
                )
            shape[0] = batch_size
        dtype = getattr(torch, info.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=gen).to(dtype))
        elif dtype == torch.bool:
            tensors.append(torch.ones(shape, dtype=dtype))
        else:
            tensors.append(torch.randint(0, 2, shape, generator=gen, dtype=dtype))
    return tensors


def run_export(
    folder: str | os.PathLike[str],
    batch_size: int | None = None,
    micro_batches: int | None = None,
    batches: int = 10,
    threads: int = 1,
    local: bool = False,
    warmup: int = 1,
    transport: str = "auto",
    replicas: int | None = None,
    placement: str = "PACK",
    progress: Callable[[str], None] | None = None,
    sparse: bool = False,
) -> RunReport:
    """Run an export folder on random inputs (one Ray actor per part, with `transport` between them, in
    `replicas` copies placed by `placement`; or in this process with `local`) and measure it. The batch size
    micro-batches and replicas default to what the search priced (`priced_batch`, `priced_replicas`; one
    copy in this process); `sparse`: see `RayRunner`; `progress` hears each step."""
    say = progress or (lambda _: None)
    manifest = read_manifest(folder)
    priced_size, priced_micro = priced_batch(manifest)
    if replicas is None:
        replicas = 1 if local else priced_replicas(manifest)
    micro_batches = micro_batches or priced_micro
    batch_size = batch_size or priced_size
    layout, loaders = manifest_layout(manifest), export_loaders(folder)
    inputs = export_inputs(manifest, batch_size, micro_batches=micro_batches)
    parts = len(layout.parts)
    if local:
        say(f"loading {parts} part(s) in this process")
        runner = LocalRunner(layout, loaders, threads)
    else:
        copies = f" x {replicas} replicas" if replicas > 1 else ""
        say(f"starting {parts * replicas} Ray actor(s) ({parts} parts{copies}); each loads its part file")
        runner = RayRunner(
            layout,
            loaders,
            threads=threads,
            transport=transport,
            replicas=replicas,
            placement=placement,
            sparse=sparse,
        )
    try:
        size = inputs[0].shape[0] if inputs else 0
        say(f"measuring {batches} batch(es) of {size} in {micro_batches} micro-batch(es), after {warmup} warm-up")
        report, _ = measure(runner, inputs, batches, micro_batches, warmup)
    finally:
        runner.close()
    return report


def priced_batch(manifest: Manifest) -> tuple[int | None, int]:
    """(batch size, micro-batches) the search that chose this export priced it at (recorded by `decomp
    export`), else (None: the export's own batch, 1)."""
    priced = _priced(manifest)
    return priced.get("batch_size"), int(priced.get("micro_batches", 1))


def priced_replicas(manifest: Manifest) -> int:
    """Copies of the pipeline the search priced this export with (recorded by `decomp export`), else 1."""
    return int(_priced(manifest).get("replicas", 1))


def _priced(manifest: Manifest) -> dict:
    costs = manifest.expected_costs if isinstance(manifest.expected_costs, dict) else {}
    return costs.get("runtime") or {}


def stage_seconds(
    split: SplitModel, threads: int = 1, batches: int = 8, warmup: int = 2, min_seconds: float = 1.0
) -> list[float]:
    """Seconds per call each part of `split` takes when the parts run side by side as a pipeline of Ray
    actors (`threads` torch threads each) on the split's example inputs, streamed for at least `batches`
    calls and `min_seconds` after `warmup` ones: what `decomp.partition.tune_pipeline` balances."""
    with RayRunner(split.layout, loaders_for(split.modules), threads=threads) as runner:
        report, _ = measure(runner, split.example_inputs, batches, warmup=warmup, min_seconds=min_seconds)
    return [busy / report.batches for busy in report.busy_s]
