"""Group decomposition: channel groups from the weights, masks between groups, the branches as parts."""

import pytest
import torch
from torch import nn

from decomp import InvalidPlanError, build_graph
from decomp.partition import split_model
from decomp.partition.branches import apply_masks, group_masks, group_split
from decomp.partition.width import WidthSplit, split_width, width_plan
from decomp.pruning import make_permanent
from decomp.pruning.train import TrainConfig, train


def chain(width: int = 12) -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.GELU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 4),
    ).eval()


def hidden_groups(model: nn.Module, groups: int, seed: int = 0) -> list[list[set[int]]]:
    """Make the through layers block-diagonal in a random channel order; the groups per channel space."""
    g = torch.Generator().manual_seed(seed)
    spaces = []
    for path in ("0", "2", "4"):
        n = model.get_submodule(path).out_features
        order = torch.randperm(n, generator=g)
        spaces.append([set(c.tolist()) for c in order.tensor_split(groups)])
    with torch.no_grad():
        for j, path in enumerate(("2", "4"), start=1):
            weight = model.get_submodule(path).weight
            keep = torch.zeros_like(weight)
            for inputs, outputs in zip(spaces[j - 1], spaces[j], strict=True):
                keep[torch.tensor(sorted(outputs))[:, None], torch.tensor(sorted(inputs))[None, :]] = 1
            weight.mul_(keep)
    return spaces


@pytest.mark.parametrize("groups", [2, 3])
def test_groups_hidden_in_the_weights_are_found(groups):
    torch.manual_seed(0)
    model = chain()
    truth = hidden_groups(model, groups)
    split = group_split(model, ["0", "2", "4", "6"], groups)
    assert split.through == ("2", "4") and split.then == "6" and split.ways == groups
    for found, hidden in zip(split.channels, truth, strict=True):
        assert sorted(map(set, found), key=min) == sorted(hidden, key=min)
    # the model already has no weight between groups: the branches compute it exactly
    x = torch.randn(5, 6)
    decomposed = split_width(model, x, [split])
    torch.testing.assert_close(decomposed.module(x), model(x), atol=1e-6, rtol=0)


def test_masked_model_decomposes_into_independent_branches():
    torch.manual_seed(0)
    model, x = chain(10), torch.randn(5, 6)
    split = group_split(model, ["0", "2", "4", "6"], 3)
    assert all(max(map(len, c)) - min(map(len, c)) <= 1 for c in split.channels)  # 10 channels: 4, 3, 3
    with pytest.raises(InvalidPlanError, match="changes the outputs"):  # weights between groups still there
        split_width(model, x, [split])
    masks = group_masks(model, split)
    assert set(masks) == {"2.weight", "4.weight"}
    apply_masks(model, masks)
    make_permanent(model)
    decomposed = split_width(model, x, [split])
    assert decomposed.max_abs_diff <= 1e-6
    through = sum(p.numel() for n, p in model.named_parameters() if n in masks)
    kept = sum(int(m.sum()) for m in masks.values())
    before = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in decomposed.module.parameters()) == before - through + kept
    graph = build_graph(decomposed.module, x)
    plan = width_plan(graph, decomposed)
    part = plan.part_of()
    branch = {n: k for k, nodes in enumerate(decomposed.slices[0]) for n in nodes}
    for u, v in graph.nx.edges:  # nothing flows between branches
        assert not (u in branch and v in branch and branch[u] != branch[v]), (u, v)
    assert {part[n] for n in decomposed.slices[0][2]} == {2}
    torch.testing.assert_close(split_model(decomposed.module, (x,), plan)(x)[0], model(x), atol=1e-6, rtol=0)


def test_fine_tuning_keeps_the_weights_between_groups_at_zero():
    torch.manual_seed(0)
    model = chain()
    split = group_split(model, ["0", "2", "4", "6"], 2)
    masks = group_masks(model, split)
    apply_masks(model, masks)
    data = [(torch.randn(8, 6), torch.randint(0, 4, (8,))) for _ in range(4)]
    before = model.get_submodule("2").weight.detach().clone()
    train(model, data, TrainConfig(epochs=2, lr=1e-2))
    weight = make_permanent(model).get_submodule("2").weight
    assert not torch.equal(weight, before)  # it trained
    assert float(weight.detach()[masks["2.weight"] == 0].abs().max()) == 0.0


def test_bad_group_decompositions_are_refused():
    model = chain()
    with pytest.raises(InvalidPlanError, match="at least 3 layers"):
        group_split(model, ["0", "6"], 2)
    with pytest.raises(InvalidPlanError, match="at least 2 groups"):
        group_split(model, ["0", "2", "6"], 1)
    with pytest.raises(InvalidPlanError, match="fewer than 40 groups"):
        group_split(model, ["0", "2", "6"], 40)
    depthwise = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 2, 1))
    with pytest.raises(InvalidPlanError, match="groups=1"):
        group_split(depthwise, ["0", "1", "2"], 2)
    with pytest.raises(InvalidPlanError, match="need a last layer"):
        WidthSplit("0", 2, through=("2",))
    with pytest.raises(InvalidPlanError, match="cover its 12 channels"):
        split_width(model, torch.randn(1, 6), [WidthSplit("0", 2, "2", channels=(((0, 1), (2, 3)),))])


def test_decompose_job_fine_tunes_and_exports_branches(tmp_path):
    import json

    from typer.testing import CliRunner

    from cluster.cli import app
    from decomp.errors import DecompError
    from decomp.partition import read_manifest
    from decomp.partition.decompose import DecomposeRequest, run_decompose

    spec = "python:tests.benchmarks.models:group_cnn_spec?width=8"
    summary = run_decompose(
        DecomposeRequest(spec, ("0", "3", "6", "9"), 4, data="digits", finetune_epochs=1), tmp_path / "four"
    )
    assert summary.parts == 4 and summary.bytes_between_branches == 0 and summary.max_abs_diff <= 1e-4
    assert set(summary.accuracy) == {"given", "masked", "fine-tuned"}
    assert summary.accuracy["fine-tuned"] > summary.accuracy["masked"]  # it learned with the masks held
    assert summary.params[1] < summary.params[0] and summary.macs[1] < summary.macs[0]
    manifest = read_manifest(tmp_path / "four")
    assert manifest.expected_costs["group_decomposition"]["through"] == ["3", "6"]
    assert len(manifest.parts) == 4
    with pytest.raises(DecompError, match="needs --data"):
        DecomposeRequest(spec, ("0", "3", "9"), 2, finetune_epochs=1)
    result = CliRunner().invoke(
        app,
        [
            "decompose",
            spec,
            "--chain",
            "0,3,6,9",
            "--groups",
            "2",
            "--out",
            str(tmp_path / "two"),
            "--json",
            str(tmp_path / "s.json"),
            "--png",
            str(tmp_path / "two.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "no --data" in result.output and json.loads((tmp_path / "s.json").read_text())["parts"] == 2
    assert (tmp_path / "two.png").read_bytes()[:4] == b"\x89PNG"
