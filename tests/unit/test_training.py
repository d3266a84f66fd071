"""The training loop, Han's iterative recipe, dropout adjustment and dead-neuron removal."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from decomp import DecompError
from decomp.pruning import LayerSparsity, PruningPlan, apply_plan
from decomp.pruning.apply import make_permanent, mask_in_place
from decomp.pruning.han import adjust_dropout, dropout_baseline, han_prune, remove_dead_neurons
from decomp.pruning.train import TrainConfig, evaluate, train


def _data(n=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=gen)
    teacher = torch.randn(10, 3, generator=gen)
    y = (x @ teacher).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=gen)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Dropout(0.4), nn.Linear(32, 3))


def test_training_learns_and_evaluates():
    model, loader = _mlp(), _data()
    before = evaluate(model, loader)
    losses = train(model, loader, TrainConfig(epochs=5, lr=1e-2))
    assert losses[-1] < losses[0] and evaluate(model, loader) > max(0.8, before + 0.2)
    assert not model.training


def test_masked_weights_stay_zero_while_survivors_train():
    model, loader = _mlp(), _data()
    masked = apply_plan(model, PruningPlan(layers=(LayerSparsity("0", sparsity=0.75),)), (torch.randn(2, 10),), "mask")
    start = masked.module[0].weight.detach().clone()
    train(masked.module, loader, TrainConfig(epochs=2, lr=1e-2))
    weight = masked.module[0].weight.detach()
    assert bool((weight[start == 0] == 0).all())
    assert not torch.equal(weight[start != 0], start[start != 0])


def test_l1_penalty_shrinks_weights():
    loader = _data()
    plain, sparse = _mlp(), _mlp()
    train(plain, loader, TrainConfig(epochs=3, lr=1e-2))
    train(sparse, loader, TrainConfig(epochs=3, lr=1e-2, l1=1e-2))
    assert sparse[0].weight.abs().sum() < 0.8 * plain[0].weight.abs().sum()


def test_distillation_pulls_student_towards_teacher():
    loader = _data()
    teacher = _mlp(seed=1)
    train(teacher, loader, TrainConfig(epochs=4, lr=1e-2))
    student = _mlp(seed=2)
    x = torch.randn(256, 10)

    def gap():
        with torch.no_grad():
            return float(
                nn.functional.kl_div(student(x).log_softmax(-1), teacher(x).softmax(-1), reduction="batchmean")
            )

    before = gap()
    train(student, loader, TrainConfig(epochs=4, lr=1e-2, distill=1.0), teacher=teacher)
    assert gap() < 0.5 * before
    with pytest.raises(DecompError, match="needs a teacher"):
        train(student, loader, TrainConfig(distill=0.5))


def test_bad_config_is_named():
    with pytest.raises(DecompError, match="unknown optimizer 'lbfgs'"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(DecompError, match=r"distill weight must be in \[0, 1\]"):
        TrainConfig(distill=2.0)


def test_dropout_scales_with_the_square_root_of_live_connections():
    model = _mlp()
    baseline = dropout_baseline(model)
    assert baseline.feeds == {"2": "3"} and baseline.connections == {"3": 96}
    mask_in_place(model, PruningPlan(layers=(LayerSparsity("3", sparsity=0.75),)))
    rates = adjust_dropout(model, baseline)
    assert rates["2"] == pytest.approx(0.4 * math.sqrt(24 / 96)) == model[2].p


def test_han_rounds_prune_further_and_keep_accuracy_on_an_easy_task():
    model, loader = _mlp(), _data()
    train(model, loader, TrainConfig(epochs=5, lr=1e-2))
    dense = evaluate(model, loader)
    rounds = han_prune(model, loader, loader, qualities=[0.5, 1.0], retrain=TrainConfig(epochs=4, lr=5e-3))
    nonzeros = [r.nonzeros for r in rounds]
    assert nonzeros == sorted(nonzeros, reverse=True) and nonzeros[-1] < 0.5 * rounds[0].weights
    assert rounds[-1].accuracy > dense - 0.05
    assert rounds[-1].dropout["2"] < 0.4
    assert hasattr(model[0], "weight_mask")  # masks kept for further rounds


def test_dead_neurons_are_removed_without_changing_outputs():
    model = _mlp().eval()
    with torch.no_grad():
        model[3].weight[:, [1, 5]] = 0  # no outputs
        model[0].weight[[7, 9]] = 0  # no inputs ...
        model[0].bias[7] = 0  # ... and no bias: dead; neuron 9 keeps its bias, so it stays
    x = torch.randn(8, 10)
    with torch.no_grad():
        expected = model(x)
    mask_in_place(model, PruningPlan(layers=(LayerSparsity("0", sparsity=0.0),)))  # masks on the input model
    pruned = remove_dead_neurons(model, (x,))
    assert pruned.module[0].out_features == 29 and pruned.module[3].in_features == 29
    with torch.no_grad():
        torch.testing.assert_close(pruned.module(x), expected)
    assert hasattr(model[0], "weight_mask") and model[0].out_features == 32  # the input model is left as it was


def test_make_permanent_folds_masks():
    model = _mlp()
    mask_in_place(model, PruningPlan(layers=(LayerSparsity("0", sparsity=0.5),)))
    make_permanent(model)
    assert not hasattr(model[0], "weight_mask") and isinstance(model[0].weight, nn.Parameter)
    assert int((model[0].weight == 0).sum()) == 160


def test_sensitivity_finds_the_layer_that_matters():
    from decomp.pruning.sensitivity import sensitivity

    model, loader = _mlp(), _data()
    train(model, loader, TrainConfig(epochs=5, lr=1e-2))
    x = (torch.randn(2, 10),)
    layers = sensitivity(model, x, lambda m: evaluate(m, loader), ratios=(0.0, 0.9), structured=False)
    assert set(layers) == {"0", "3"}
    assert all(rows[0][1] > rows[1][1] for rows in layers.values())  # 90% of any layer hurts
    groups = sensitivity(model, x, lambda m: evaluate(m, loader), ratios=(0.5,))
    assert list(groups) == ["0"] and 0.0 <= groups["0"][0][1] <= 1.0


def test_adaptive_bn_reestimates_statistics_without_touching_weights():
    from decomp.pruning import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten())
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batches = [torch.randn(8, 1, 6, 6) * 3 + 2 for _ in range(3)]
    assert recalibrate_batchnorm(model, batches) == 1 and not model.training
    with torch.no_grad():
        conv = torch.cat([model[0](b) for b in batches])
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, conv.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())  # no gradient step
    assert bn.momentum == 0.1  # restored
    assert recalibrate_batchnorm(nn.Linear(3, 2), batches) == 0  # nothing to recalibrate: unchanged
    with pytest.raises(DecompError, match="at least one batch"):
        recalibrate_batchnorm(model, [])
