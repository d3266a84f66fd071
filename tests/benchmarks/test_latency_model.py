"""The latency model against measurement on this CPU (1 torch thread).

30 candidates, unpartitioned: resnet18, mobilenet_v2 (224x224, batch 1) and an MLP
(784-1024-1024-10, batch 64), each at 10 structured prune ratios (channels physically removed).
Every op is profiled in place into the op table (`profile_ops`, each op's call timed inside whole
forward passes), and the prediction (the sum of the model's op times from the table, no calibration:
in-place times are in-model times) is compared with the measured forward time. Targets: mean
absolute percentage error <= 10%, Spearman rank correlation >= 0.9 (asserted: Spearman, and MAPE <=
20%, the floor). For comparison, the same with a `Calibration` fitted on 9 *other* candidates (3
ratios per model that are not among the 30), and with ops timed alone (`method='isolated'`,
torch.utils.benchmark) with and without calibration. Also: seconds to predict one candidate of
resnet50 size from a warm table (target <= 5 ms).

Targets and the floor are asserted at full size. At smoke size (2 ratios per model, 1 for the calibration, one
round of 3 forwards, predictions timed on resnet18) the same path runs: every op priced from the table, a
calibration fitted, every prediction positive and every figure produced.
"""

import os
import statistics
import time

import pytest
import torch
import torchvision.models as tvm
from scipy.stats import spearmanr
from torch import nn

from decomp.graph import ModelGraph
from decomp.latency import LatencyModel, OpTable, calibrate, device_key, profile_ops
from decomp.latency.job import measure_latency, this_device
from decomp.latency.predict import activation_traffic
from decomp.latency.table import _encoded
from decomp.pruning import apply_plan, find_groups, plan_for_ratio
from tests.benchmarks import size
from tests.benchmarks.record import record

pytestmark = pytest.mark.benchmark

THREADS = 1
RATIOS = size.pick(full=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8), smoke=(0.0, 0.5))
CALIBRATION_RATIOS = size.pick(full=(0.05, 0.35, 0.65), smoke=(0.35,))
# profiled and measured in 3 interleaved rounds of 10 forwards; least times kept
REPEATS, ROUNDS = size.pick(full=(10, 3), smoke=(3, 1))
MIN_RUN_TIME = size.pick(full=0.02, smoke=0.002)  # seconds per op timed alone (method='isolated')
PREDICTED_MODEL, PREDICTIONS = size.pick(full=("resnet50", 50), smoke=("resnet18", 10))  # timed predictions
MAPE_TARGET, SPEARMAN_TARGET, PREDICT_MS_TARGET = 0.10, 0.9, 5.0
# Asserted: the floor below which the model is broken, not the target; how the target fares in a run is
# printed and recorded with the machine's load, which on a shared 2-core machine can double forward times.
MAPE_FLOOR = 0.20


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


MODELS = {  # name -> (factory, input shape)
    "resnet18": (lambda: tvm.resnet18(), (1, 3, 224, 224)),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(), (1, 3, 224, 224)),
    "mlp": (_mlp, (64, 1, 28, 28)),
}


def _candidates(ratios):
    for name, (factory, shape) in MODELS.items():
        torch.manual_seed(0)
        model, x = factory().eval(), torch.randn(shape)
        index = find_groups(model, (x,))
        for ratio in ratios:
            pruned = apply_plan(model, plan_for_ratio(index, ratio), (x,), "physical").module if ratio else model
            yield name, ratio, pruned.eval(), x


def _run(ratios, table, latency, method="in_place"):
    """(name, ratio, graph, summed table seconds, ops, measured seconds, activation traffic) per candidate.
    Each round profiles a candidate's ops and at once measures its forward time, so both see the same
    load from other tenants of the machine; rounds go over all candidates, so a burst of load hits one
    round of many candidates, not every round of one. Least times are kept (op tables merged)."""
    candidates = list(_candidates(ratios))
    measured, graphs = [float("inf")] * len(candidates), []
    for _ in range(ROUNDS):
        fresh, graphs = OpTable(table.device), []
        for i, (_, _, model, x) in enumerate(candidates):
            graphs.append(
                profile_ops(
                    model, x, fresh, threads=THREADS, method=method, min_run_time=MIN_RUN_TIME, repeats=REPEATS
                )[0]
            )
            measured[i] = min(measured[i], measure_latency(model, (x,), REPEATS, warmup=2, stat="min"))
        table.merge(fresh)
    rows = []
    for (name, ratio, _, _), graph, seconds_measured in zip(candidates, graphs, measured, strict=True):
        seconds, guessed = latency.op_seconds(graph, latency.cluster.devices[0].kind)
        assert not guessed, f"{name}@{ratio}: {len(guessed)} ops missing from the table after profiling"
        traffic = activation_traffic(graph, graph.compute_nodes())
        rows.append((name, ratio, graph, sum(seconds.values()), len(seconds), seconds_measured, traffic))
    return rows


def test_latency_predictions_match_measurements():
    torch.set_num_threads(THREADS)
    load_before, started = os.getloadavg()[0], time.perf_counter()
    key = device_key("cpu", THREADS)
    table = OpTable(key)
    cluster = this_device("cpu", THREADS)
    raw = LatencyModel(cluster, {key: table})
    fit_rows = _run(CALIBRATION_RATIOS, table, raw)
    calibration = calibrate(*([r[i] for r in fit_rows] for i in (3, 4, 5, 6)))
    calibrated = LatencyModel(cluster, {key: table}, {key: calibration})
    rows = _run(RATIOS, table, raw)
    predicted = [raw.predict(r[2]).compute_s[0] for r in rows]
    measured = [r[5] for r in rows]
    errors = [abs(p / m - 1) for p, m in zip(predicted, measured, strict=True)]
    cal_errors = [abs(calibrated.predict(r[2]).compute_s[0] / r[5] - 1) for r in rows]
    mape, rho = statistics.mean(errors), spearmanr(predicted, measured).statistic

    # the same with ops timed alone (torch.utils.benchmark), for comparison
    iso_table = OpTable(key)
    iso_raw = LatencyModel(cluster, {key: iso_table})
    iso_fit = _run(CALIBRATION_RATIOS, iso_table, iso_raw, "isolated")
    iso_model = LatencyModel(
        cluster, {key: iso_table}, {key: calibrate(*([r[i] for r in iso_fit] for i in (3, 4, 5, 6)))}
    )
    iso_rows = _run(RATIOS, iso_table, iso_raw, "isolated")
    iso_mape = statistics.mean(abs(iso_model.predict(r[2]).compute_s[0] / r[5] - 1) for r in iso_rows)
    iso_raw_mape = statistics.mean(abs(r[3] / r[5] - 1) for r in iso_rows)

    torch.manual_seed(0)
    r50, x50 = getattr(tvm, PREDICTED_MODEL)().eval(), torch.randn(1, 3, 224, 224)
    graph50, _ = profile_ops(r50, x50, table, threads=THREADS)
    calibrated.predict(graph50)  # warm
    times = []
    graphs = [ModelGraph(graph50.nx) for _ in range(PREDICTIONS)]  # a new graph object each time: nothing derived
    for graph in graphs:
        _encoded.cache_clear()  # and no op signature encoded by an earlier prediction
        start = time.perf_counter()
        calibrated.predict(graph)
        times.append(time.perf_counter() - start)
    predict_ms = 1000 * statistics.median(times)

    load = (
        f"{time.perf_counter() - started:.0f} s; 1-min load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    by_model = {name: statistics.mean(e for r, e in zip(rows, errors, strict=True) if r[0] == name) for name in MODELS}
    lines = [
        f"## Latency model vs measurement (CPU, {THREADS} torch thread, unpartitioned)",
        "",
        f"{len(rows)} candidates: {', '.join(MODELS)} at structured prune ratios {', '.join(map(str, RATIOS))} "
        "(resnet18 and mobilenet_v2 at 1x3x224x224, the MLP 784-1024-1024-10 at batch 64); in each of "
        f"{ROUNDS} rounds over all candidates, a candidate's ops are profiled and at once its forward time "
        "measured (both under the same load), keeping least times (op tables merged "
        f"with `OpTable.merge`; measured: the least of {ROUNDS}x{REPEATS} forwards). Ops profiled in place "
        f"(each op's call timed inside whole forward passes) into the op table ({len(table)} signatures in the "
        "end); predicted: the sum of the candidate's op times from the table. For comparison: calibration "
        f"`{calibration}` fitted on {len(fit_rows)} other candidates (ratios "
        f"{', '.join(map(str, CALIBRATION_RATIOS))}), and ops timed alone.",
        "",
        "| model | ratio | ops | measured ms | predicted ms | error |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r[0]} | {r[1]} | {r[4]} | {1000 * r[5]:.2f} | {1000 * p:.2f} | {100 * (p / r[5] - 1):+.1f}% |"
            for r, p in zip(rows, predicted, strict=True)
        ],
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| mean absolute percentage error | **{100 * mape:.1f}%** | <= {100 * MAPE_TARGET:.0f}% "
        f"({'met' if mape <= MAPE_TARGET else 'NOT met'} in this run) |",
        f"| Spearman rank correlation | **{rho:.3f}** | >= {SPEARMAN_TARGET} |",
        f"| MAPE per model | {', '.join(f'{n} {100 * e:.1f}%' for n, e in by_model.items())} | |",
        f"| MAPE with the calibration | {100 * statistics.mean(cal_errors):.1f}% | |",
        f"| ops timed alone (`method='isolated'`, torch.utils.benchmark): MAPE uncalibrated / calibrated | "
        f"{100 * iso_raw_mape:.1f}% / {100 * iso_mape:.1f}% | |",
        f"| predict one {PREDICTED_MODEL} candidate ({len(graph50.compute_nodes())} ops; a graph object not priced "
        f"before, nothing cached from earlier predictions), warm table: median of {PREDICTIONS} | "
        f"**{predict_ms:.2f} ms** | <= {PREDICT_MS_TARGET:.0f} ms |",
        "",
        f"Run: {load}.",
    ]
    record("latency-model", lines)
    print("\n".join(lines))
    assert all(p > 0 for p in predicted), f"predicted seconds must be > 0, got {predicted}"
    if not size.is_full():
        return
    assert mape <= MAPE_FLOOR, f"latency MAPE {100 * mape:.1f}% ({load}); floor {100 * MAPE_FLOOR:.0f}%"
    assert rho >= SPEARMAN_TARGET, f"Spearman {rho:.3f} < {SPEARMAN_TARGET}"
    assert predict_ms <= PREDICT_MS_TARGET, f"one prediction takes {predict_ms:.2f} ms > {PREDICT_MS_TARGET} ms"
