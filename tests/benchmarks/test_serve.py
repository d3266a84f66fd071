"""Serving (`decomp serve`): a 2-stage export behind Ray Serve under a load test over HTTP, against the same
export streamed by `decomp run` (`RayRunner`, no HTTP, no request batching) in the same sitting: latency
percentiles per request and throughput. Full size: resnet50 (224x224); smoke: resnet18 at 64x64, fewer
requests."""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
from ray import serve

from cluster.runners import RayRunner, export_loaders
from cluster.runtime import export_inputs, measure
from cluster.serve import load_test, serve_export
from decomp.partition import load_export, manifest_layout, read_manifest
from decomp.partition.job import SplitRequest, run_split
from tests.benchmarks import size
from tests.benchmarks.record import record

pytestmark = [pytest.mark.benchmark, pytest.mark.usefixtures("local_ray")]
RAY_CPUS = 4  # the served pipeline's 2 actors and the compared runner's 2 (one works at a time)

MODEL = size.pick(full="resnet50", smoke="resnet18")
SIDE = size.pick(full=224, smoke=64)
REQUESTS = size.pick(full=96, smoke=16)
CONCURRENCY = 4
PORT = 8932


def test_serving_latency_and_throughput(tmp_path):
    out = tmp_path / "out"
    run_split(SplitRequest(f"torchvision:{MODEL}", 2, input_shapes=((1, 3, SIDE, SIDE),)), out)
    manifest = read_manifest(out)
    (x,) = export_inputs(manifest, 1)
    (want,) = load_export(out)(x)
    with RayRunner(manifest_layout(manifest), export_loaders(out), threads=1) as runner:
        direct, _ = measure(runner, [x.expand(CONCURRENCY, *x.shape[1:])], batches=REQUESTS // CONCURRENCY,
                            micro_batches=CONCURRENCY)  # fmt: skip
    load = os.getloadavg()[0]
    try:
        handle = serve_export(out, port=PORT, threads=1, max_batch=CONCURRENCY, wait_ms=5)
        (got,) = handle.infer.remote([x]).result()
        assert (got - want).abs().max() <= 1e-4  # what decomp run computes
        report = load_test(f"http://127.0.0.1:{PORT}/", [x], REQUESTS, CONCURRENCY)
        handle_latencies, start = [], time.perf_counter()
        for _ in range(REQUESTS // CONCURRENCY):  # the Python handle: no HTTP, no JSON
            sent = time.perf_counter()
            for response in [handle.infer.remote([x]) for _ in range(CONCURRENCY)]:
                response.result()
            handle_latencies.append(time.perf_counter() - sent)
        handle_rate = REQUESTS // CONCURRENCY * CONCURRENCY / (time.perf_counter() - start)
    finally:
        serve.shutdown()
    lines = [
        f"## Serving a 2-stage {MODEL} export (`decomp serve`, CPU, 1 torch thread per stage)",
        "",
        f"{REQUESTS} HTTP requests of one 3x{SIDE}x{SIDE} image, {CONCURRENCY} in flight (JSON in and out), Serve "
        f"batching up to {CONCURRENCY} requests within 5 ms; beside it the same export streamed by `decomp run` "
        f"(Ray actors, micro-batches of 1 image, {CONCURRENCY} in flight, no HTTP). 1-min load average {load:.1f}.",
        "",
        "| path | p50 latency, ms | p99 latency, ms | images/s |",
        "|---|---|---|---|",
        f"| decomp serve (HTTP) | {1000 * report.p50_s:.0f} | {1000 * report.p99_s:.0f} | {report.throughput:.2f} |",
        f"| decomp serve (Python handle; latency per {CONCURRENCY} requests) | "
        f"{1000 * statistics.median(handle_latencies):.0f} | {1000 * max(handle_latencies):.0f} (max) | "
        f"{handle_rate:.2f} |",
        f"| decomp run (no HTTP; latency per {CONCURRENCY}-image batch) | {1000 * direct.latency_median_s:.0f} | "
        f"{1000 * direct.latency_max_s:.0f} (max) | {direct.throughput:.2f} |",
        "",
        "The served answers equal the export's outputs (max abs difference <= 1e-4, checked in the run). Over HTTP "
        "each image travels as JSON text (about 1.5 MB for 3x224x224) and is parsed by the Serve proxy and replica; "
        "that, not the pipeline, is what the HTTP row's gap to the handle row measures.",
    ]
    record("serve", lines)
    print("\n".join(lines))
    assert report.throughput > 0 and torch.isfinite(got).all()
