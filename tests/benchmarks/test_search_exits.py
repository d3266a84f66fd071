"""Exit points and thresholds searched (`search.exits`): on the early-exit benchmark's CNN (`group_cnn(32)`
trained on digits), an exit after block 1, 2 or 3 (the model split in 2 parts there) and its threshold,
under objectives measured on the validation split with the exit distribution: accuracy, expected MACs per
input, expected bytes per input across the cut, expected latency of a micro-batch of 64 on `cpu-host-x4`
(op times measured here, 1 thread). Each searcher's hypervolume against the plain 2-part splits at the same
cuts without an exit (one normaliser over every point of this run); the front of one run with its test
accuracy (thresholds chosen on validation, scored on the test split).

At smoke size: fewer epochs, a smaller budget, one seed.
"""

import statistics

import pytest
import torch
from torch.utils.data import DataLoader

from decomp.data import load_data
from decomp.latency import LatencyModel
from decomp.latency.cluster import load_cluster
from decomp.partition.exits import exit_report
from decomp.pruning.train import TrainConfig, evaluate, train
from search.exits import CLOSED, ExitEvaluator, ExitSpace
from search.objectives import objectives_for
from search.pareto import Normalizer, hypervolume, minimized, non_dominated
from search.records import Candidate
from search.registry import make_searcher
from tests.benchmarks import size
from tests.benchmarks.models import group_cnn
from tests.benchmarks.record import record
from tests.benchmarks.searching import drive

pytestmark = pytest.mark.benchmark

EPOCHS, HEAD_EPOCHS = size.pick(full=(15, 15), smoke=(2, 2))
BUDGET, BATCH, SEEDS = size.pick(full=40, smoke=12), 4, size.pick(full=(0, 1, 2), smoke=(0,))
SEARCHERS = ("random", "nsga2", "optuna")
POINTS = ("_2", "_5", "_8")  # the ReLU ending blocks 1, 2, 3
OBJECTIVES = ("accuracy", "macs", "comm_bytes", "latency_s")


def test_exit_points_and_thresholds_searched():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = load_data("digits").with_validation(0.2)
    train_loader = DataLoader(data.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    validation, test = DataLoader(data.validation, batch_size=256), DataLoader(data.test, batch_size=256)
    model = group_cnn(32)
    train(model, train_loader, TrainConfig(epochs=EPOCHS, lr=3e-3, schedule="cosine"))
    x = next(iter(test))[0][:64]
    space = ExitSpace(POINTS)
    latency = LatencyModel(load_cluster("cpu-host-x4"))
    evaluator = ExitEvaluator(model, (x,), space, latency, train_loader, validation, head_epochs=HEAD_EPOCHS)
    objectives = objectives_for(OBJECTIVES)
    runs = {}
    for name in SEARCHERS:
        for seed in SEEDS:
            searcher = make_searcher(
                name, space, objectives, seed=seed, **({"population": 8} if name == "nsga2" else {})
            )
            runs[name, seed] = [(c.genome, e) for c, e in drive(searcher, evaluator, objectives, BUDGET, BATCH)]
    plain = [
        (g, evaluator.evaluate(Candidate(i, "plain", g), objectives))
        for i, g in enumerate((k, CLOSED) for k in range(len(POINTS)))
    ]
    everything = [e.values for told in [*runs.values(), plain] for _, e in told if e.ok]
    normalizer = Normalizer.from_points(minimized(everything, objectives))

    def volume(told) -> float:
        return hypervolume(minimized([e.values for _, e in told if e.ok], objectives), normalizer)

    base = volume(plain)
    lines = [
        "## Exit points and thresholds searched (digits CNN, 2 parts, CPU)",
        "",
        f"`group_cnn(32)` trained {EPOCHS} epochs on digits ({100 * evaluate(model, test):.2f}% test accuracy); an "
        f"exit after op {', '.join(POINTS)} (blocks 1-3; head trained {HEAD_EPOCHS} epochs on the frozen backbone), "
        f"split in 2 parts there, threshold in [0.3, 1] or closed. Objectives {', '.join(OBJECTIVES)} measured on "
        f"the validation split under the exit share (expected MACs and bytes per input, latency of a micro-batch of "
        f"64 on `cpu-host-x4`); {BUDGET} evaluations per run, seeds {', '.join(map(str, SEEDS))}. Hypervolume "
        "under one normaliser (every point of this run) against the plain 2-part splits at the same cuts.",
        "",
        "| searcher | hypervolume (mean) | vs the plain splits |",
        "|---|---|---|",
        f"| plain splits (no exit) | {base:.4f} | 1.00x |",
    ]
    means = {}
    for name in SEARCHERS:
        means[name] = statistics.fmean(volume(runs[name, s]) for s in SEEDS)
        lines.append(f"| {name} | {means[name]:.4f} | **{means[name] / base:.2f}x** |")
    told = [(g, e) for g, e in runs["nsga2", SEEDS[0]] if e.ok]
    mask = non_dominated(minimized([e.values for _, e in told], objectives))
    distinct = {}  # thresholds between the same two softmax values give the same candidate: one row each
    for (g, e), keep in zip(told, mask, strict=True):
        if keep:
            distinct.setdefault(e.values, (g, e))
    front = sorted(distinct.values(), key=lambda ge: ge[1].metrics["macs"])
    lines += [
        "",
        f"Front of nsga2, seed {SEEDS[0]}, one row per distinct outcome (thresholds chosen on the validation "
        "split; test accuracy on the test split):",
        "",
        "| exit after | threshold | leaving early (validation) | validation accuracy | test accuracy | MACs per input "
        "| bytes per input sent | latency of 64 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for genome, e in front:
        point = evaluator.point(space.point_of(genome))
        on_test = exit_report(point.exits, [float(genome[1])], test)
        threshold = "closed" if genome[1] > 1 else f"{genome[1]:.3f}"
        m = e.metrics
        lines.append(
            f"| {space.point_of(genome)} | {threshold} | {100 * m['exit_share']:.1f}% | {100 * m['accuracy']:.2f}% | "
            f"{100 * on_test.accuracy:.2f}% | {m['macs'] / 1e6:.2f}M | {m['comm_bytes'] / 1024:.1f} KiB | "
            f"{1e3 * m['latency_s']:.2f} ms |"
        )
    record("search-exits", lines)
    print("\n".join(lines))
    assert all(v > 0 for v in means.values()) and base > 0
    if size.is_full():
        assert all(v >= base for v in means.values()), (means, base)
