"""Early exits on a trained CNN (`decomp.partition.exits`): an exit head after the second of four conv blocks
of `tests.benchmarks.models.group_cnn` trained on digits (a 2-part split's cut), trained with the backbone
frozen, its threshold calibrated on a validation split (a fifth of the training data) for at most 0.5
point of accuracy lost at 90% confidence (the drop's one-sided upper bound there); on the test split: the
share of inputs that leave at the exit, the accuracy, MACs per input and the bytes per input the cut would
not send on. Then the model with its exit is split at the cut
(`exit_plan`: backbone to the exit and the head on part 0, the rest on part 1), exported, and run on two 1-thread
Ray actors (`cluster.exit_runner.ExitRunner`: part 0 keeps back the rows of inputs that leave) over the test
split in micro-batches, with the calibrated threshold and with the exit closed (threshold above 1: the same
export as a plain 2-part pipeline), alternating in rounds: throughput, the share of inputs leaving and the
bytes per input sent to part 1.

At smoke size: fewer epochs, one round.
"""

import statistics

import pytest
import torch
from torch.utils.data import DataLoader

from decomp.data import load_data
from decomp.partition.exits import ExitModel, calibrate_exits, exit_report, train_exits
from decomp.pruning.train import TrainConfig, evaluate, train
from tests.benchmarks import size
from tests.benchmarks.models import group_cnn
from tests.benchmarks.record import record

pytestmark = [pytest.mark.benchmark, pytest.mark.usefixtures("local_ray")]
RAY_CPUS = 4

EPOCHS, HEAD_EPOCHS = size.pick(full=(15, 15), smoke=(2, 2))
MICRO, ROUNDS = 60, size.pick(full=5, smoke=1)  # 360 test images in micro-batches of 60, per round
MAX_DROP = 0.005
AT = "_5"  # the second block's ReLU


def _runtime(exits, test, threshold, tmp_path) -> dict[str, list]:
    """Per runner (exit open, exit closed) its reports over the rounds: (images/s, ExitReport)."""
    import time

    from cluster.exit_runner import ExitRunner
    from cluster.runners import export_loaders
    from decomp.build import build_graph
    from decomp.partition import export_split, manifest_layout, read_manifest, split_model
    from decomp.partition.exits import exit_plan

    images = torch.cat([x for x, _ in test])
    x = images[:MICRO]
    export_split(split_model(exits, (x,), exit_plan(build_graph(exits, (x,)), exits)), tmp_path / "exit")
    layout, loaders = manifest_layout(read_manifest(tmp_path / "exit")), export_loaders(tmp_path / "exit")
    batches = [[images[i : i + MICRO]] for i in range(0, len(images) - MICRO + 1, MICRO)]
    runners = {"exit": ExitRunner(layout, loaders, threshold), "no exit": ExitRunner(layout, loaders, 1.01)}
    out: dict[str, list] = {name: [] for name in runners}
    try:
        for runner in runners.values():
            list(runner.map(batches[:1]))  # warm up
        for _ in range(ROUNDS):
            for name, runner in runners.items():
                before = runner.report()
                start = time.perf_counter()
                list(runner.map(batches))
                seconds = time.perf_counter() - start
                after = runner.report()
                done = after.inputs - before.inputs
                out[name].append(
                    (
                        done / seconds,
                        (after.exited - before.exited) / done,
                        (after.bytes_sent - before.bytes_sent) / done,
                    )
                )
    finally:
        for runner in runners.values():
            runner.close()
    return out


def test_early_exit_at_the_cut(tmp_path):
    data = load_data("digits").with_validation(0.2)
    train_loader = DataLoader(data.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    validation, test = DataLoader(data.validation, batch_size=256), DataLoader(data.test, batch_size=256)
    model = group_cnn(32)
    train(model, train_loader, TrainConfig(epochs=EPOCHS, lr=3e-3, schedule="cosine"))
    exits = ExitModel(model, (next(iter(test))[0][:4],), [AT])
    losses = train_exits(exits, train_loader, epochs=HEAD_EPOCHS, lr=2e-2)
    thresholds = calibrate_exits(exits, validation, MAX_DROP)
    report = exit_report(exits, thresholds, test)
    on_validation = exit_report(exits, thresholds, validation)
    drop = report.final_accuracy - report.accuracy
    validation_drop = on_validation.final_accuracy - on_validation.accuracy
    lines = [
        "## Early exit at a 2-part cut (digits CNN, CPU)",
        "",
        f"`group_cnn(32)` trained {EPOCHS} epochs on digits (test accuracy {100 * evaluate(model, test):.1f}%); an "
        f"exit head (global average pool, Linear) after op `{AT}` (the second of four conv blocks), trained "
        f"{HEAD_EPOCHS} epochs with the backbone frozen (loss {losses[0]:.2f} -> {losses[-1]:.2f}); threshold on "
        f"the top softmax probability calibrated on the validation split for <= {100 * MAX_DROP:.1f} point lost at "
        "90% confidence "
        f"(there: {100 * on_validation.exit_share[0]:.1f}% leave, {100 * validation_drop:+.2f} points).",
        "",
        "| on the test split | value |",
        "|---|---|",
        f"| threshold | {report.thresholds[0]:.3f} |",
        f"| inputs leaving at the exit | **{100 * report.exit_share[0]:.1f}%** |",
        f"| accuracy with the exit / the model's own | {100 * report.accuracy:.2f}% / "
        f"{100 * report.final_accuracy:.2f}% ({100 * drop:+.2f} points lost) |",
        f"| MACs per input, mean | {report.macs / 1e6:.2f}M of {report.full_macs / 1e6:.2f}M "
        f"({100 * report.macs / report.full_macs:.0f}%) |",
        f"| bytes per input not sent across the cut, mean | {report.bytes_not_sent[0] / 1024:.1f} KiB of "
        f"{exits.cut_bytes[0] / 1024:.1f} KiB |",
    ]
    runs = _runtime(exits, test, thresholds[0], tmp_path)

    def median(name: str, k: int) -> float:
        return statistics.median(r[k] for r in runs[name])

    speedup = statistics.median(a[0] / b[0] for a, b in zip(runs["exit"], runs["no exit"], strict=True))
    lines += [
        "",
        f"On Ray (two 1-thread actors, micro-batches of {MICRO} test images, median of {ROUNDS} rounds):",
        "",
        "| runner | images/s | leaving at the exit | bytes per input sent to part 1 |",
        "|---|---|---|---|",
        *[
            f"| {name} | {median(name, 0):.0f} | {100 * median(name, 1):.1f}% | {median(name, 2) / 1024:.1f} KiB |"
            for name in runs
        ],
        "",
        f"Throughput with the exit / without: **{speedup:.2f}x**.",
    ]
    record("early-exits", lines)
    print("\n".join(lines))
    assert 0.0 <= report.exit_share[0] <= 1.0 and report.macs <= report.full_macs + sum(exits.head_macs)
