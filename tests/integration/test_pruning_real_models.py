"""Structured pruning at a 50% channel ratio on torchvision classification models."""

import pytest
import torch
import torchvision.models as tvm

from decomp import build_graph
from decomp.pruning import apply_plan, find_groups, plan_for_ratio

pytestmark = pytest.mark.slow

MODELS = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "densenet121",
    "googlenet",
    "convnext_tiny",
    "regnet_x_400mf",
    "vit_b_16",
]
# channels normalised by LayerNorm: masking a channel changes the statistics, removing it does not
LAYERNORM_MODELS = {"convnext_tiny"}


@pytest.mark.parametrize("name", MODELS)
def test_half_channels_gives_a_smaller_model_that_runs_and_retraces(name):
    torch.manual_seed(0)
    model = tvm.get_model(name).eval()
    x = torch.randn(2, 3, 224, 224)
    plan = plan_for_ratio(find_groups(model, (x,)), 0.5)
    pruned = apply_plan(model, plan, (x,), "physical")
    with torch.no_grad():
        out = pruned.module(x)
    assert out.shape == (2, 1000)
    before, after = build_graph(model, x), build_graph(pruned.module, x)
    assert after.totals.params < 0.4 * before.totals.params
    assert after.totals.macs < 0.4 * before.totals.macs
    if name not in LAYERNORM_MODELS:
        masked = apply_plan(model, pruned.plan, (x,), "mask")
        with torch.no_grad():
            torch.testing.assert_close(masked.module(x), out, atol=1e-4, rtol=1e-4)
