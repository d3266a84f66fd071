"""Han's per-layer threshold, global magnitude plans and sparse storage size."""

import pytest
import torch
from torch import nn

from decomp import InvalidPlanError
from decomp.pruning import apply_plan
from decomp.pruning.unstructured import global_magnitude_plan, han_plan, prunable_layers, sparse_size


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10)).eval()
    with torch.no_grad():
        model[2].weight.mul_(5)  # a layer with larger weights
    return model, (torch.randn(4, 20),)


def test_han_threshold_is_quality_times_std_per_layer():
    model, _ = _mlp()
    plan = han_plan(model, quality=0.5)
    for item in plan.layers:
        w = dict(model.named_modules())[item.layer].weight.detach()
        expected = float((w.abs() <= 0.5 * w.std()).float().mean())
        assert item.sparsity == pytest.approx(expected)
    # scaling a layer scales its threshold: the share removed stays the same (about 38% for a normal layer)
    shares = [item.sparsity for item in plan.layers]
    assert all(0.25 < s < 0.5 for s in shares)


def test_global_threshold_prunes_small_layers_harder():
    model, inputs = _mlp()
    plan = global_magnitude_plan(model, 0.5)
    by_layer = {item.layer: item.sparsity for item in plan.layers}
    assert by_layer["0"] > 0.5 > by_layer["2"]  # the layer with 5x larger weights keeps more
    pruned = apply_plan(model, plan, inputs).module
    nonzero = sum(int((pruned[i].weight != 0).sum()) for i in (0, 2))
    assert nonzero == pytest.approx(0.5 * (600 + 300), abs=2)


def test_sparse_size_counts_values_indices_and_fillers():
    layer = nn.Linear(300, 1, bias=False)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, [0, 1, 299]] = 1.0  # gap of 297 > 255: one filler entry at 8-bit indices
    size = sparse_size(nn.Sequential(layer), value_bits=32, index_bits=8)
    assert (size.weights, size.nonzeros, size.dense_bytes) == (300, 3, 1200)
    assert size.sparse_bytes == (4 * (32 + 8) + 7) // 8
    assert size.pruned_ratio == 100 and size.compression == pytest.approx(1200 / 20)


def test_errors_name_the_problem():
    model, _ = _mlp()
    with pytest.raises(InvalidPlanError, match="no weighted layer"):
        han_plan(model, 1.0, layers=["9"])
    with pytest.raises(InvalidPlanError, match="quality parameter must be >= 0"):
        han_plan(model, -1.0)
    with pytest.raises(InvalidPlanError, match=r"pruning ratio must be in \[0, 1\)"):
        global_magnitude_plan(model, 1.0)
    assert prunable_layers(model) == ["0", "2"]
