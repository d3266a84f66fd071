"""Serve an export folder with Ray Serve: `decomp serve EXPORT`.

One Serve deployment (`ExportServer`) owns a `cluster.runners.RayRunner` over the export's parts (their
actors, transport, placement and replicas as `decomp run` makes them). Requests are batched by Serve
(`serve.batch`: up to `max_batch` requests or `wait_ms`, whichever comes first; two batches in flight, run
off the event loop so requests keep arriving); the samples of a batch go through the pipeline in
micro-batches of the size the export was made for (padded with copies of the last sample where the export
fixes its batch, the padding dropped again), and each request gets its own rows back.

HTTP: POST a JSON object `{"inputs": [input_0, input_1, ...]}` to the route, each input a nested list with the
batch dimension first (one or more samples); the answer is `{"outputs": [...]}` in the same layout. Python:
the `DeploymentHandle` `serve_export` returns takes a list of tensors. `load_test` sends requests from several
threads over HTTP and reports latency percentiles and throughput.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch
from ray import serve

from cluster.runners import RayRunner, export_loaders
from cluster.runtime import priced_batch, priced_replicas, split_batch
from decomp.errors import DecompError, InputShapeError
from decomp.partition.manifest import Manifest, manifest_layout, read_manifest

__all__ = ["LoadReport", "ExportServer", "load_test", "serve_export"]


def _micro_size(manifest: Manifest) -> tuple[int, bool]:
    """Samples per micro-batch and whether the export fixes it (a static batch dimension)."""
    shape = manifest.inputs[0].shape
    fixed = any(info.batch_dim != 0 for info in manifest.inputs)
    size, micro = priced_batch(manifest)
    if fixed or size is None:
        return int(shape[0]), fixed
    return max(1, size // micro), False


def _pad(batch: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    """The batch with copies of its last sample appended up to a multiple of `size` samples."""
    count = batch[0].shape[0]
    extra = -count % size
    if not extra:
        return batch
    return [torch.cat([t, t[-1:].expand(extra, *t.shape[1:])]) for t in batch]


@serve.deployment(ray_actor_options={"num_cpus": 0})
class ExportServer:
    """The Serve deployment: a pipeline of the export's parts on Ray actors; see the module docstring."""

    def __init__(self, folder: str, transport: str, replicas: int, placement: str, threads: int) -> None:
        self.manifest = read_manifest(folder)
        self.size, self.fixed = _micro_size(self.manifest)
        self.runner = RayRunner(
            manifest_layout(self.manifest),
            export_loaders(folder),
            threads=threads,
            transport=transport,
            replicas=replicas,
            placement=placement,
        )

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """The model's outputs for `inputs` (any number of samples)."""
        infos = self.manifest.inputs
        if len(inputs) != len(infos):
            raise InputShapeError(f"the model takes {len(infos)} input(s) ({', '.join(i.name for i in infos)})")
        for x, info in zip(inputs, infos, strict=True):
            if tuple(x.shape[1:]) != tuple(info.shape[1:]):
                raise InputShapeError(
                    f"input {info.name!r} has shape {tuple(x.shape)}; the export takes (batch, "
                    f"{', '.join(map(str, info.shape[1:]))})"
                )
        count = inputs[0].shape[0]
        padded = _pad([x.to(getattr(torch, i.dtype)) for x, i in zip(inputs, infos, strict=True)], self.size)
        chunks = split_batch(padded, padded[0].shape[0] // self.size)
        outs = list(self.runner.map(chunks))  # batches in flight at once interleave on the actors
        return [torch.cat([o[j] for o in outs])[:count] for j in range(len(outs[0]))]

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005, max_concurrent_batches=2)
    async def _batched(self, requests: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        counts = [r[0].shape[0] for r in requests]
        batch = [torch.cat([r[j] for r in requests]) for j in range(len(requests[0]))]
        # off the event loop: requests keep arriving (and batching) while this batch is in the pipeline
        outputs = await asyncio.to_thread(self.run, batch)
        answers, start = [], 0
        for n in counts:
            answers.append([o[start : start + n] for o in outputs])
            start += n
        return answers

    async def infer(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """One request through the batching queue (Python handle)."""
        return await self._batched(inputs)

    async def __call__(self, request) -> dict[str, Any]:
        try:
            body = await request.json()
            inputs = [torch.as_tensor(x) for x in body["inputs"]]
            outputs = await self._batched(inputs)
        except (KeyError, TypeError, ValueError, DecompError) as err:
            from starlette.responses import JSONResponse

            return JSONResponse({"error": f"{type(err).__name__}: {err}"}, status_code=400)
        return {"outputs": [o.tolist() for o in outputs]}

    def configure(self, max_batch: int, wait_ms: float) -> None:
        self._batched.set_max_batch_size(max_batch)
        self._batched.set_batch_wait_timeout_s(wait_ms / 1000)


def serve_export(
    folder: str | os.PathLike[str],
    port: int = 8000,
    route: str = "/",
    transport: str = "auto",
    replicas: int | None = None,
    placement: str = "PACK",
    threads: int = 1,
    max_batch: int = 8,
    wait_ms: float = 5.0,
    name: str = "decomp",
):
    """Deploy the export as a Serve application on the connected Ray cluster (HTTP on `port`); returns its
    `DeploymentHandle` once every part is loaded. `replicas` default: what the search priced."""
    manifest = read_manifest(folder)  # a tampered or missing folder is an error before anything starts
    if replicas is None:
        replicas = priced_replicas(manifest)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = ExportServer.bind(os.fspath(folder), transport, replicas, placement, threads)
    handle = serve.run(app, name=name, route_prefix=route)
    handle.configure.remote(max_batch, wait_ms).result()
    return handle


@dataclass(frozen=True)
class LoadReport:
    """Latency of each request (seconds, from send to answer) and throughput over the test."""

    requests: int
    concurrency: int
    samples_per_request: int
    seconds: float
    p50_s: float
    p99_s: float
    throughput: float  # requests per second

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_test(url: str, inputs: list[torch.Tensor], requests: int, concurrency: int = 4) -> LoadReport:
    """Send `requests` copies of `inputs` to `url` over HTTP from `concurrency` threads at once."""
    body = json.dumps({"inputs": [x.tolist() for x in inputs]}).encode()

    def one(_: int) -> float:
        start = time.perf_counter()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
        if "outputs" not in answer:
            raise DecompError(f"the server answered {answer}")
        return time.perf_counter() - start

    one(0)  # warm up
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
    return LoadReport(
        requests, concurrency, inputs[0].shape[0], seconds, statistics.median(latencies), p99, requests / seconds
    )
