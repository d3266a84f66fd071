"""The latency model on architectures it was never fitted on (CPU, 1 torch thread, uncalibrated).

The op table of this device is built from the layer sweep (`decomp.latency.sweep`: synthetic blocks,
no architecture) and from the ops of a few *tuned* architectures profiled in place; the op model
(`decomp.latency.opmodel`) learns from it. *Held-out* architectures of every family (mobile, residual,
dense, inception, transformer) are then priced from their costed graphs alone, none of their ops timed
(an op whose signature the table already holds from another model is priced from the table, as for a
user), and compared with their measured forward time at batch 1 and 8. In each round every table entry
is profiled and every held-out model measured, so both see the same load; least times are kept.

For comparison: the op model fitted on the sweep alone (no architecture at all, tuned ones then count as
held out too) and on the tuned architectures alone (no sweep). Target: held-out MAPE <= 12%
(the floor asserted at full size: 20%). At smoke size, a small sweep, one tuned and two held-out models
run the same path.
"""

import os
import statistics
import time

import pytest
import torch
import torchvision.models as tvm

from decomp.build import graph_from_module
from decomp.latency import LatencyModel, OpTable, device_key, profile_ops
from decomp.latency.job import measure_latency, this_device
from decomp.latency.sweep import profile_sweep
from decomp.tracing import trace
from tests.benchmarks import size
from tests.benchmarks.record import record

pytestmark = pytest.mark.benchmark

THREADS = 1
BATCHES = size.pick(full=(1, 8), smoke=(1,))
SWEEP_BLOCKS = size.pick(full=400, smoke=20)
ROUNDS, REPEATS = size.pick(full=(2, 10), smoke=(1, 3))
TUNED = size.pick(
    full={"resnet18": "residual", "mobilenet_v2": "mobile", "vit_b_16": "transformer", "vgg11": "plain"},
    smoke={"resnet18": "residual"},
)
HELD_OUT = size.pick(
    full={
        "mobilenet_v3_small": "mobile",
        "mobilenet_v3_large": "mobile",
        "shufflenet_v2_x1_0": "mobile",
        "mnasnet1_0": "mobile",
        "efficientnet_b0": "mobile",
        "efficientnet_v2_s": "mobile",
        "squeezenet1_1": "mobile",
        "resnet50": "residual",
        "resnext50_32x4d": "residual",
        "regnet_y_400mf": "residual",
        "regnet_x_800mf": "residual",
        "densenet121": "dense",
        "googlenet": "inception",
        "alexnet": "plain",
        "vit_b_32": "transformer",
        "convnext_tiny": "transformer",
        "swin_t": "transformer",
    },
    smoke={"mobilenet_v3_small": "mobile", "squeezenet1_1": "mobile"},
)
MAPE_TARGET, MAPE_FLOOR = 0.12, 0.20


def _model(name: str, batch: int):
    torch.manual_seed(0)
    return getattr(tvm, name)().eval(), torch.randn(batch, 3, 224, 224)


def _errors(model: LatencyModel, graphs: dict, measured: dict) -> dict:
    """(name, batch) -> (predicted seconds, error, ops not from the table)."""
    out = {}
    for key, graph in graphs.items():
        p = model.predict(graph)
        out[key] = (p.compute_s[0], p.compute_s[0] / measured[key] - 1, p.estimated_ops)
    return out


def _mape(errors: dict, keys) -> float:
    return statistics.mean(abs(errors[k][1]) for k in keys)


def test_latency_on_new_architectures():
    torch.set_num_threads(THREADS)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    key = device_key("cpu", THREADS)
    sweep, tuned = OpTable(key), OpTable(key)
    cases = [(n, b) for n in HELD_OUT for b in BATCHES]
    models = {c: _model(*c) for c in cases}
    graphs = {c: graph_from_module(trace(m, (x,)), name=c[0]) for c, (m, x) in models.items()}
    tuned_graphs, measured = {}, {c: float("inf") for c in [*cases, *((n, b) for n in TUNED for b in BATCHES)]}
    for _ in range(ROUNDS):
        fresh_sweep, fresh_tuned = OpTable(key), OpTable(key)
        profile_sweep(fresh_sweep, threads=THREADS, batches=BATCHES, blocks=SWEEP_BLOCKS, repeats=REPEATS)
        for name in TUNED:
            for batch in BATCHES:
                model, x = _model(name, batch)
                tuned_graphs[name, batch] = profile_ops(model, (x,), fresh_tuned, threads=THREADS, repeats=REPEATS)[0]
                measured[name, batch] = min(measured[name, batch], measure_latency(model, (x,), REPEATS, 2, "min"))
        for c, (model, x) in models.items():
            measured[c] = min(measured[c], measure_latency(model, (x,), REPEATS, 2, "min"))
        sweep.merge(fresh_sweep)
        tuned.merge(fresh_tuned)
    both = OpTable(key, dict(sweep.entries)).merge(tuned)
    cluster = this_device("cpu", THREADS)
    fitted = time.perf_counter()
    main = _errors(LatencyModel(cluster, {key: both}), graphs, measured)
    fit_s = time.perf_counter() - fitted
    everything = {**graphs, **tuned_graphs}
    sweep_only = _errors(LatencyModel(cluster, {key: sweep}), everything, measured)
    tuned_only = _errors(LatencyModel(cluster, {key: tuned}), graphs, measured)
    tuned_cases = list(tuned_graphs)
    # tuned architectures against the table that holds their ops: the sum of their own op times
    own = _errors(LatencyModel(cluster, {key: both}), tuned_graphs, measured)

    held = _mape(main, cases)
    by_batch = {b: _mape(main, [c for c in cases if c[1] == b]) for b in BATCHES}
    families = sorted(set(HELD_OUT.values()))
    by_family = {f: _mape(main, [c for c in cases if HELD_OUT[c[0]] == f]) for f in families}
    load = (
        f"{time.perf_counter() - started:.0f} s; 1-min load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    lines = [
        f"## Latency on new architectures (CPU, {THREADS} torch thread, uncalibrated)",
        "",
        f"Op table: the layer sweep ({SWEEP_BLOCKS} synthetic blocks per batch size, no architecture; "
        f"{len(sweep)} signatures) and the ops of the tuned architectures {', '.join(TUNED)} profiled in place "
        f"({len(tuned)} signatures); the op model learns from it ({len(both)} entries). Held-out architectures "
        "priced from their costed graphs, none of their ops timed (ops whose signature the table already holds "
        "from another model priced from the table; `learned` counts the rest); measured: the least of "
        f"{ROUNDS}x{REPEATS} eager forwards, in the same rounds as the profiling. Batch sizes "
        f"{', '.join(map(str, BATCHES))}, 224x224 inputs.",
        "",
        "| family | model | batch | ops | learned | measured ms | predicted ms | error | error, sweep only | "
        "error, tuned only |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[
            f"| {HELD_OUT[c[0]]} | {c[0]} | {c[1]} | {len(graphs[c].compute_nodes())} | {main[c][2]} | "
            f"{1000 * measured[c]:.2f} | {1000 * main[c][0]:.2f} | {100 * main[c][1]:+.1f}% | "
            f"{100 * sweep_only[c][1]:+.1f}% | {100 * tuned_only[c][1]:+.1f}% |"
            for c in cases
        ],
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| held-out MAPE ({len(HELD_OUT)} architectures x {len(BATCHES)} batch sizes) | **{100 * held:.1f}%** | "
        f"<= {100 * MAPE_TARGET:.0f}% ({'met' if held <= MAPE_TARGET else 'NOT met'} in this run) |",
        *[f"| held-out MAPE at batch {b} | {100 * v:.1f}% | |" for b, v in by_batch.items()],
        f"| held-out MAPE per family | {', '.join(f'{f} {100 * v:.1f}%' for f, v in by_family.items())} | |",
        f"| held-out MAPE without swin_t (its `shifted_window_attention` is one opaque function of many ops) | "
        f"{100 * _mape(main, [c for c in cases if c[0] != 'swin_t'] or cases):.1f}% | |",
        f"| op model fitted on the sweep alone: held-out / tuned architectures (all unseen) | "
        f"{100 * _mape(sweep_only, cases):.1f}% / {100 * _mape(sweep_only, tuned_cases):.1f}% | |",
        f"| op model fitted on the tuned architectures alone (no sweep): held-out | "
        f"{100 * _mape(tuned_only, cases):.1f}% | |",
        f"| tuned architectures, their own profiled ops summed | {100 * _mape(own, tuned_cases):.1f}% | |",
        f"| fitting the op model and pricing {len(cases)} graphs | {fit_s:.1f} s | |",
        "",
        f"Run: {load}.",
    ]
    record("latency-new-architectures", lines)
    print("\n".join(lines))
    assert all(main[c][0] > 0 for c in cases), main
    assert all(main[c][2] > 0 for c in cases), "every held-out graph has ops the table lacks"
    if size.is_full():
        assert held <= MAPE_FLOOR, f"held-out latency MAPE {100 * held:.1f}% ({load}); floor {100 * MAPE_FLOOR:.0f}%"
