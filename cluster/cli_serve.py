"""`decomp serve`: an export folder as a Ray Serve application (see `cluster.serve`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cluster.cli_app import JsonOut, Placement, Replicas, Transport, app, console, write_json


@app.command()
def serve(
    export: Annotated[Path, typer.Argument(help="an export folder written by decomp split or decomp export")],
    port: Annotated[int, typer.Option(help="HTTP port (on 127.0.0.1)")] = 8000,
    route: Annotated[str, typer.Option(help="HTTP route")] = "/",
    transport: Transport = "auto",
    replicas: Replicas = None,
    placement: Placement = "PACK",
    threads: Annotated[int, typer.Option(help="torch threads per part")] = 1,
    max_batch: Annotated[int, typer.Option(help="requests batched together at most")] = 8,
    wait_ms: Annotated[float, typer.Option(help="how long a request waits for others to batch with")] = 5.0,
    load_test: Annotated[
        Optional[int], typer.Option(help="send this many requests, report latency and throughput, then stop")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="load test: requests in flight at once")] = 4,
    samples: Annotated[int, typer.Option(help="load test: samples per request")] = 1,
    address: Annotated[Optional[str], typer.Option(help="a Ray cluster to join (default: start one here)")] = None,
    json_path: JsonOut = None,
) -> None:
    """Serve an export over HTTP with Ray Serve (POST {"inputs": [...]}); with --load-test, measure it and stop."""
    import ray
    from ray import serve as ray_serve

    from cluster.connect import join
    from cluster.runtime import export_inputs
    from cluster.serve import load_test as run_load_test
    from cluster.serve import serve_export
    from decomp.partition import read_manifest

    started = join(address)
    try:
        with console.status(f"starting Ray Serve and the parts of {export} ..."):
            serve_export(export, port, route, transport, replicas, placement, threads, max_batch, wait_ms)
        url = f"http://127.0.0.1:{port}{route}"
        if load_test is None:
            console.print(f'serving {export} at {url} (POST {{"inputs": [...]}}); Ctrl-C stops')
            while True:
                time.sleep(3600)
        inputs = export_inputs(read_manifest(export), samples)
        with console.status(f"load test: {load_test} requests, {concurrency} at once ..."):
            report = run_load_test(url, inputs, load_test, concurrency)
        table = Table(title=f"{export} served at {url}: {load_test} requests of {samples} sample(s)")
        for column in ("", "value"):
            table.add_column(column, justify="left" if not column else "right")
        table.add_row("latency p50", f"{1000 * report.p50_s:.1f} ms")
        table.add_row("latency p99", f"{1000 * report.p99_s:.1f} ms")
        table.add_row("throughput", f"{report.throughput:.1f} requests/s ({concurrency} in flight)")
        console.print(table)
        write_json(json_path, report.to_json())
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        ray_serve.shutdown()
        if started:
            ray.shutdown()
