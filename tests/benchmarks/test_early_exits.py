"""Early exits on a trained CNN (`decomp.partition.exits`): an exit head after the second of four conv blocks
of `tests.benchmarks.models.group_cnn` trained on digits (a 2-part split's cut), trained with the backbone
frozen, its threshold calibrated on a validation split (a fifth of the training data) for at most 0.5
point of accuracy lost; on the test split: the share of inputs that leave at the exit, the accuracy, MACs
per input and the bytes per input the cut would not send on. (Throughput of the export on Ray actors with
exits is not measured yet: the runtime does not stop inputs early yet.)

At smoke size: fewer epochs.
"""

import pytest
import torch
from torch.utils.data import DataLoader

from decomp.data import load_data
from decomp.partition.exits import ExitModel, calibrate_exits, exit_report, train_exits
from decomp.pruning.train import TrainConfig, evaluate, train
from tests.benchmarks import size
from tests.benchmarks.models import group_cnn
from tests.benchmarks.record import record

pytestmark = pytest.mark.benchmark

EPOCHS, HEAD_EPOCHS = size.pick(full=(15, 15), smoke=(2, 2))
MAX_DROP = 0.005
AT = "_5"  # the second block's ReLU


def test_early_exit_at_the_cut():
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
        f"the top softmax probability calibrated on the validation split for <= {100 * MAX_DROP:.1f} point lost "
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
    record("early-exits", lines)
    print("\n".join(lines))
    assert 0.0 <= report.exit_share[0] <= 1.0 and report.macs <= report.full_macs + sum(exits.head_macs)
