"""Dynamic (recoverable) masks and learnable channel gates with a schedule."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from decomp import InvalidPlanError
from decomp.pruning.dynamic import DynamicMasks
from decomp.pruning.train import TrainConfig, evaluate, train


def _feature_zero_task(n=512):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen)
    y = (x[:, 0] > 0).long()  # only feature 0 matters
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=gen)


def _biased_start():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.01, 0.5, -0.6, 0.7], [-0.01, -0.5, 0.6, 0.4]]))
    return model


def test_pruned_weights_that_grow_important_come_back():
    loader = _feature_zero_task()
    model = _biased_start()
    dynamic = DynamicMasks(model, ["0"], sparsity=0.5, every=5)
    assert not dynamic.masks()["0"][:, 0].any()  # feature 0 starts pruned: its weights are smallest
    train(model, loader, TrainConfig(epochs=4, lr=5e-2), callbacks=[dynamic])
    masks = dynamic.finish()
    assert masks["0"][:, 0].all() and dynamic.recovered >= 2  # spliced back
    assert int(masks["0"].sum()) <= 4 + 2  # sparsity kept up to the hysteresis band
    assert evaluate(model, loader) > 0.9
    assert isinstance(model[0].weight, nn.Parameter) and int((model[0].weight == 0).sum()) == 8 - int(masks["0"].sum())


def test_static_masks_cannot_recover():
    from decomp.pruning import LayerSparsity, PruningPlan
    from decomp.pruning.apply import mask_in_place

    loader = _feature_zero_task()
    model = _biased_start()
    mask_in_place(model, PruningPlan(layers=(LayerSparsity("0", sparsity=0.5),)))
    train(model, loader, TrainConfig(epochs=4, lr=5e-2))
    assert not model[0].weight[:, 0].any() and evaluate(model, loader) < 0.75


def test_dynamic_masks_check_their_arguments():
    with pytest.raises(InvalidPlanError, match=r"pruning ratio must be in \[0, 1\)"):
        DynamicMasks(_biased_start(), ["0"], sparsity=1.2)
    with pytest.raises(InvalidPlanError, match="no weighted layer"):
        DynamicMasks(_biased_start(), ["9"], sparsity=0.5)


def _gated_setup():
    from decomp.pruning import find_groups
    from tests.tiny_models import TinyNet

    torch.manual_seed(0)
    model, x = TinyNet().eval(), torch.randn(4, 3, 8, 8)
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(256, 3, 8, 8, generator=gen)
    labels = (inputs.mean((1, 2, 3)) > 0).long() + 2 * (inputs[:, 0].mean((1, 2)) > 0).long()
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=32, shuffle=True, generator=gen)
    return model, x, loader, find_groups(model, (x,))


def test_gate_schedule_changes_rate_and_strategy_then_prunes_exactly():
    from decomp.pruning import apply_plan
    from decomp.pruning.gates import ChannelGates, GateStage

    model, x, loader, index = _gated_setup()
    schedule = [GateStage(0, "l1", rate=0.25, penalty=1e-3), GateStage(1, "hard", rate=0.25), GateStage(2, "hard", 0.5)]
    gates = ChannelGates(model, index, schedule=schedule)
    before = {k: g.detach().clone() for k, g in gates.gates.items()}
    train(model, loader, TrainConfig(epochs=3, lr=1e-2), callbacks=[gates])
    assert [(e, s.strategy, s.rate) for e, s in gates.history] == [(0, "l1", 0.25), (1, "hard", 0.25), (2, "hard", 0.5)]
    assert all(not torch.equal(before[k], g) for k, g in gates.gates.items())  # the gates learned
    assert all(int((g == 0).sum()) == len(g) // 2 for g in gates.gates.values())  # half held shut
    with torch.no_grad():
        gated = model(x)
    plan = gates.finish()
    pruned = apply_plan(model, plan, (x,), "physical").module
    assert pruned.stem.out_channels == 4 and pruned.fuse.out_channels == 4
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), gated, atol=1e-5, rtol=1e-4)


def test_l1_gates_shrink_and_bad_stages_are_named():
    from decomp.pruning.gates import ChannelGates, GateStage

    model, _, loader, index = _gated_setup()
    gates = ChannelGates(model, index, groups=["fuse"], schedule=[GateStage(0, "l1", penalty=5e-2)])
    train(model, loader, TrainConfig(epochs=3, lr=1e-2), callbacks=[gates])
    assert float(gates.gate("fuse").abs().mean()) < 0.9
    with pytest.raises(InvalidPlanError, match="unknown gate strategy 'soft'"):
        GateStage(0, "soft")
    with pytest.raises(InvalidPlanError, match="in order of their epoch"):
        ChannelGates(model, index, schedule=[GateStage(2), GateStage(1)])
