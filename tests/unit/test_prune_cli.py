"""`decomp prune`: one-shot and iterative pruning jobs that write a folder a fresh model reloads from."""

import json

import pytest
import torch
from typer.testing import CliRunner

from cluster.cli import app
from decomp import DecompError, InvalidPlanError, load_data, load_model
from decomp.pruning.job import PruneRequest, PruneSummary, load_pruned, run_prune

TINY = "python:tests.tiny_models:tiny_net"
DATA = "synthetic?shape=[3,8,8]&classes=10&size=256&train=192&test=64"


def _outputs(module, x):
    with torch.no_grad():
        return module(x)


def test_structured_job_writes_a_folder_that_reloads(tmp_path):
    out = tmp_path / "pruned"
    summary = run_prune(PruneRequest(TINY, "l2", ratio=0.5, data=DATA, finetune_epochs=1, distill=0.5), out)
    assert sorted(p.name for p in out.iterdir()) == ["plan.json", "summary.json", "weights.safetensors"]
    assert summary.after.params < 0.5 * summary.before.params
    assert 0.0 <= summary.after.accuracy <= 1.0
    x = torch.randn(2, 3, 8, 8)
    rebuilt = load_pruned(out)
    assert rebuilt.stem.out_channels == 4
    assert PruneSummary.from_json(json.loads((out / "summary.json").read_text())) == summary
    again = load_pruned(out)
    torch.testing.assert_close(_outputs(rebuilt, x), _outputs(again, x))


def test_magnitude_iterations_reach_the_ratio_and_keep_zeros(tmp_path):
    summary = run_prune(
        PruneRequest(TINY, "magnitude", ratio=0.8, iterations=2, data=DATA, finetune_epochs=1), tmp_path / "m"
    )
    after = summary.after
    assert after.nonzero_weights == pytest.approx(0.2 * after.weights, rel=0.02)
    assert after.params == summary.before.params and after.sparse_bytes < summary.before.sparse_bytes
    rebuilt = load_pruned(tmp_path / "m")
    assert int((rebuilt.fc.weight == 0).sum()) > 0


def test_nm_and_han_methods(tmp_path):
    nm = run_prune(PruneRequest(TINY, "nm", pattern="2:4"), tmp_path / "nm")
    model = load_model(TINY).module
    fitting = [m.weight.numel() for m in (model.branches.left, model.branches.right, model.fuse, model.fc)]
    assert nm.after.nonzero_weights == nm.before.nonzero_weights - sum(fitting) // 2  # 27, 9 inputs: no 2:4
    han = run_prune(
        PruneRequest(
            "python:decomp.zoo:lenet_300_100",
            "han",
            quality=1.0,
            iterations=2,
            data="mnist?train=256&test=128",
            finetune_epochs=1,
        ),
        tmp_path / "han",
    )
    assert han.after.nonzero_weights < han.before.nonzero_weights
    assert load_pruned(tmp_path / "han")(torch.randn(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "random", "ratio": 0.5}, "unknown pruning method 'random'; choose one of l1, l2"),
        ({"method": "l1"}, "needs --ratio"),
        ({"method": "l1", "ratio": 1.0}, r"pruning ratio must be in \[0, 1\), got 1.0"),
        ({"method": "han", "quality": 1.0}, "needs training data: give --data"),
        ({"method": "nm", "pattern": "4:2"}, "0 < N < M"),
        ({"method": "l1", "ratio": 0.5, "distill": 0.5}, "give --data and --finetune-epochs"),
        ({"method": "magnitude", "ratio": 0.5, "keep": ["stem"]}, "method magnitude prunes weights: drop --keep"),
    ],
)
def test_bad_requests_are_named(kwargs, message):
    with pytest.raises((DecompError, InvalidPlanError), match=message):
        PruneRequest(TINY, **kwargs)


def test_cli_prints_before_and_after(tmp_path):
    out, summary_json = tmp_path / "cli", tmp_path / "s.json"
    result = CliRunner().invoke(
        app, ["prune", TINY, "--out", str(out), "--ratio", "0.5", "--data", DATA, "--json", str(summary_json)]
    )
    assert result.exit_code == 0, result.output
    assert "params" in result.output and "accuracy" in result.output and "wrote" in result.output
    assert json.loads(summary_json.read_text())["request"]["ratio"] == 0.5
    assert load_data(DATA).input_shape == (3, 8, 8) and load_model(TINY).module is not None


def test_keep_leaves_the_named_groups_whole_and_the_rest_pruned(tmp_path):
    from decomp.pruning import find_groups

    loaded = load_model(TINY)
    index = find_groups(loaded.module, loaded.example_inputs)
    assert {"stem", "branches.left", "branches.right"} <= set(index.groups)
    kept = index.keeping(["stem", "branches"])  # a group id, and a module path holding two groups' layers
    assert set(index.groups) - set(kept.groups) == {"stem", "branches.left", "branches.right"}
    assert kept.skipped["branches.left"] == "kept whole as asked (keep branches)"
    out = tmp_path / "kept"
    result = CliRunner().invoke(app, ["prune", TINY, "--out", str(out), "--ratio", "0.5", "--keep", "stem"])
    assert result.exit_code == 0, result.output
    plan = json.loads((out / "plan.json").read_text())
    pruned = load_pruned(out)
    assert "stem" not in [g["group"] for g in plan["groups"]] and plan["groups"]
    assert pruned.stem.out_channels == 8 and pruned.fuse.out_channels == 4  # kept whole; the rest pruned
    summary = json.loads((out / "summary.json").read_text())
    assert summary["request"]["keep"] == ["stem"] and "keep stem" in summary["skipped"]["stem"]


def test_keep_names_a_group_or_module_the_model_has():
    from decomp.errors import SpecError
    from decomp.pruning import find_groups

    loaded = load_model(TINY)
    index = find_groups(loaded.module, loaded.example_inputs)
    with pytest.raises(
        SpecError, match="keep 'stme': the model has no coupling group or module of that name; closest: stem"
    ):
        index.keeping(["stme"])
    assert set(index.keeping(["pool"]).groups) == set(index.groups)  # a module no group covers is whole already
