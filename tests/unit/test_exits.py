"""Early exits: heads on intermediate activations, trained with the backbone frozen, calibrated thresholds."""

import pytest
import torch
from torch import nn

from decomp import InvalidPlanError
from decomp.partition.exits import ExitModel, calibrate_exits, exit_report, train_exits
from tests.tiny_models import brightness_batches


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def data(n: int = 96, seed: int = 0):
    """Three classes told apart by the mean brightness of an 8x8 image: easy from the first block on."""
    return brightness_batches(n, seed)


def test_exit_model_adds_heads_and_keeps_the_final_output():
    model = net()
    x = torch.randn(4, 1, 8, 8)
    exits = ExitModel(model, (x,), ["_1"])
    final, (early,) = exits(x)
    torch.testing.assert_close(final, model(x))
    assert early.shape == (4, 3)
    assert 0 < exits.macs_to[0] < exits.total_macs and exits.cut_bytes == [8 * 8 * 8 * 4]
    with pytest.raises(InvalidPlanError, match="no op nope"):
        ExitModel(model, (x,), ["nope"])
    with pytest.raises(InvalidPlanError, match="classifier"):
        ExitModel(nn.Sequential(nn.Conv2d(1, 2, 1)), (x,), ["_0"])


def test_heads_learn_with_the_backbone_frozen_and_thresholds_hold_the_accuracy():
    model = net()
    for p in model.parameters():  # the backbone: trained enough to classify brightness
        p.requires_grad_(True)
    from decomp.pruning.train import TrainConfig, train

    train(model, data(), TrainConfig(epochs=30, lr=1e-2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exits = ExitModel(model, (torch.randn(2, 1, 8, 8),), ["_1"])
    losses = train_exits(exits, data(), epochs=20, lr=2e-2)
    assert losses[-1] < losses[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # backbone unchanged
    calibration, test = data(seed=1), data(seed=2)
    (threshold,) = calibrate_exits(exits, calibration, max_drop=0.0, confidence=0.5)
    report = exit_report(exits, [threshold], calibration)
    assert report.accuracy >= report.final_accuracy  # max_drop 0 on the samples it was calibrated on
    assert report.exit_share[0] > 0.3  # brightness is plain after one block: many inputs leave early
    assert report.macs < report.full_macs
    assert report.bytes_not_sent[0] == pytest.approx(report.exit_share[0] * exits.cut_bytes[0])
    # a higher confidence that the drop stays within budget asks for more confident exits
    (cautious,) = calibrate_exits(exits, calibration, max_drop=0.0, confidence=0.95)
    assert cautious >= threshold
    with pytest.raises(InvalidPlanError, match="confidence"):
        calibrate_exits(exits, calibration, confidence=1.0)
    closed = exit_report(exits, [1.01], test)  # a threshold above 1 closes the exit
    assert closed.exit_share == (0.0,) and closed.accuracy == closed.final_accuracy
    assert closed.macs == pytest.approx(closed.full_macs + exits.head_macs[0])


def test_an_exit_model_traces_for_export_later():
    from decomp.build import build_graph

    x = torch.randn(2, 1, 8, 8)
    exits = ExitModel(net(), (x,), ["_1"])
    graph = build_graph(exits, (x,))
    assert any(graph[n].get("module", "").startswith("heads.0") for n in graph.compute_nodes())


def _exit_split(threshold_inputs: int = 12):
    from decomp.build import build_graph
    from decomp.partition import split_model
    from decomp.partition.exits import exit_plan

    x = torch.randn(threshold_inputs, 1, 8, 8)
    exits = ExitModel(net(), (x,), ["_1"]).eval()
    graph = build_graph(exits, (x,))
    return exits, split_model(exits, (x,), exit_plan(graph, exits)), x


@pytest.mark.parametrize("threshold", [0.0, 0.36, 1.01])
def test_the_exit_runner_stops_confident_inputs_at_part_0(threshold):
    from cluster.exit_runner import ExitRunner
    from cluster.runners import loaders_for

    exits, split, x = _exit_split()
    final, (early,) = exits(x)
    confident = early.softmax(-1).max(-1).values >= threshold
    with ExitRunner(split.layout, loaders_for(split.modules), threshold, local=True) as runner:
        ((logits, exited),) = list(runner.map([[x]]))
    assert torch.equal(exited, confident)
    torch.testing.assert_close(logits, torch.where(confident[:, None], early, final))
    report = runner.report()
    row = 8 * 8 * 8 * 4  # the cut's activation per input
    assert report.inputs == 12 and report.exited == int(confident.sum())
    assert report.bytes_kept == row * report.exited and report.bytes_sent == row * (12 - report.exited)


def test_cli_exits_exports_and_eval_scores_the_export_with_its_exit(tmp_path):
    """`decomp exits` on a trained CNN: the exit's figures recorded in the manifest; `decomp eval` runs the
    export with the exit applied and gets the test accuracy `decomp exits` recorded."""
    import json

    from safetensors.torch import save_model
    from torch.utils.data import DataLoader
    from typer.testing import CliRunner

    from cluster.cli import app
    from decomp.data import load_data
    from decomp.partition.manifest import read_manifest
    from decomp.pruning.train import TrainConfig, train
    from tests.benchmarks.models import group_cnn

    model = group_cnn(32)
    train(model, DataLoader(load_data("digits").train, batch_size=64, shuffle=True), TrainConfig(epochs=2, lr=3e-3))
    save_model(model, tmp_path / "cnn.safetensors")
    spec, out = "python:tests.benchmarks.models:group_cnn_spec", tmp_path / "exit"
    args = ["exits", spec, "--weights", str(tmp_path / "cnn.safetensors"), "--at", "_5", "--data", "digits"]
    result = CliRunner().invoke(
        app, [*args, "--out", str(out), "--head-epochs", "3", "--json", str(tmp_path / "e.json")]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "e.json").read_text())
    recorded = read_manifest(out).expected_costs["exit"]
    assert recorded["at"] == "_5" and recorded["threshold"] == summary["threshold"]
    assert recorded["test"]["final_accuracy"] == pytest.approx(summary["accuracy"])
    result = CliRunner().invoke(app, ["eval", str(out), "--local", "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    score = json.loads((tmp_path / "s.json").read_text())
    assert score["recorded_by"] == "decomp exits" and score["samples"] == 360
    assert score["accuracy"] == pytest.approx(recorded["test"]["accuracy"], abs=1e-6)  # the same samples right
    # an op the model does not have is named, with ops it does have
    bad = CliRunner().invoke(app, [*args[:5], "nope", *args[6:], "--out", str(tmp_path / "bad")])
    assert isinstance(bad.exception, InvalidPlanError) and "no op nope in the model; ops are e.g. _0" in str(
        bad.exception
    )
    assert not (tmp_path / "bad").exists()  # nothing written
