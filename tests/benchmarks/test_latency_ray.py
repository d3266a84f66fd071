"""Benchmark (issue 5): predicted vs measured throughput of 2-stage pipelines on Ray actors, CPU.

`decomp calibrate` (`run_calibration`) on resnet18, mobilenet_v2 and an MLP, each structurally pruned at
six ratios and cut into 2 pipeline stages (`optimal_pipeline` over measured op times), each stage a Ray
actor with 1 torch thread. The calibration is fitted on three ratios per model; the other three are held
out: measured and predicted, never fitted on. The figure that counts is the held-out MAPE of predicted vs
measured throughput (target <= 15%). Calibrated with `parts=(2,)`: two stages side by side on this
2-core host share its caches and memory bandwidth, which a fit on single-stage runs does not see.

The floor is asserted at full size. At smoke size (the MLP at two fitted ratios and one held out, short runs
in one round) the same calibration runs on Ray actors and every candidate is measured and predicted.
"""

from __future__ import annotations

import os
import statistics

import pytest

from cluster.calibrate import CalibrateRequest, run_calibration
from tests.benchmarks import size
from tests.benchmarks.record import record

pytestmark = [pytest.mark.benchmark, pytest.mark.usefixtures("local_ray")]

MODELS = size.pick(
    full=("torchvision:resnet18", "torchvision:mobilenet_v2", "python:tests.benchmarks.models:mlp"),
    smoke=("python:tests.benchmarks.models:mlp",),
)
FITTED, HELD_OUT = size.pick(full=((0.0, 0.4, 0.7), (0.2, 0.55, 0.8)), smoke=((0.0, 0.7), (0.4,)))
# per run: batches streamed, at least this many seconds; interleaved rounds (op profiling too)
BATCHES, MIN_SECONDS, ROUNDS = size.pick(full=(12, 1.0, 3), smoke=(2, 0.0, 1))
TARGET = 0.15  # issue 5: 2-stage throughput within 15% MAPE
FLOOR = 0.30  # fails the run: the model (not the machine's noise) is broken


def test_two_stage_throughput_predictions_match_ray_measurements(tmp_path):
    request = CalibrateRequest(
        MODELS,
        ratios=FITTED,
        holdout=HELD_OUT,
        parts=(2,),
        batch_size=8,
        micro_batches=4,
        batches=BATCHES,
        rounds=ROUNDS,
        min_seconds=MIN_SECONDS,
        table=str(tmp_path / "table.json"),
        out=str(tmp_path / "calibration.json"),
    )
    load_before = os.getloadavg()[0]
    summary = run_calibration(request).to_json()
    load = f"1-min load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    rows = summary["candidates"]
    held = [r for r in rows if r["held_out"]]
    assert len(rows) == len(MODELS) * (len(FITTED) + len(HELD_OUT)) and len(held) == len(MODELS) * len(HELD_OUT)
    held_mape, fit_mape = summary["holdout_mape"], summary["mape"]
    worst = max(held, key=lambda r: abs(r["error"]))
    bias = statistics.fmean(r["error"] for r in held)
    terms = ", ".join(f"{k} {v:.3g}" for k, v in summary["calibration"].items())
    lines = [
        "## Latency model vs measurement: 2-stage pipelines on Ray actors (CPU, 1 torch thread per stage)",
        "",
        f"`run_calibration` (as `decomp calibrate --parts 2`) on {', '.join(m.split(':')[-1] for m in MODELS)}, "
        f"structured prune ratios {', '.join(map(str, FITTED))} fitted on and {', '.join(map(str, HELD_OUT))} "
        f"held out; batches of {request.batch_size} in {request.micro_batches} micro-batches streamed "
        f"({request.batches} batches per run and at least {request.min_seconds:g} s, best of {request.rounds} "
        "interleaved rounds); op times profiled "
        f"in {request.rounds} rounds, least kept. Fitted: {terms}.",
        "",
        "| candidate | measured samples/s | predicted samples/s | error | |",
        "|---|---|---|---|---|",
        *[
            f"| {r['candidate'].split(':')[-1]} | {r['measured']:.1f} | {r['predicted']:.1f} "
            f"| {100 * r['error']:+.1f}% | {'held out' if r['held_out'] else 'fitted'} |"
            for r in rows
        ],
        "",
        f"Held-out MAPE **{100 * held_mape:.1f}%** (target <= {100 * TARGET:.0f}%: "
        f"{'met' if held_mape <= TARGET else 'NOT met'} in this run; mean error {100 * bias:+.1f}%, worst "
        f"{worst['candidate'].split(':')[-1]} {100 * worst['error']:+.1f}%); in-sample MAPE "
        f"{100 * fit_mape:.1f}%. {len(rows)} candidates in {summary['seconds']:.0f} s; {load}.",
    ]
    record("latency-ray", lines)
    print("\n".join(lines))
    assert all(r["predicted"] > 0 for r in rows)
    if size.is_full():
        assert held_mape <= FLOOR, f"held-out MAPE {100 * held_mape:.1f}% ({load}); floor {100 * FLOOR:.0f}%"
