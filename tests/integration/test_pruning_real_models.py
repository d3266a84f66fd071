"""Structured pruning at a 50% channel ratio on torchvision classification models."""

import pytest
import torch
import torchvision.models as tvm

from decomp import build_graph
from decomp.pruning import apply_plan, find_groups, plan_for_ratio
from tests.lively import lively, spread

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
# channels normalised by LayerNorm (convnext's blocks, ViT's hidden width): a masked channel still counts
# in the mean and variance as a zero, a removed one does not, so masked and physical outputs differ
LAYERNORM_MODELS = {"convnext_tiny", "vit_b_16"}
ATOL = 1e-5


@pytest.mark.parametrize("name", MODELS)
def test_half_channels_gives_a_smaller_model_that_runs_and_retraces(name):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    model = lively(tvm.get_model(name), (x,), batch=4)  # own init: some outputs are ~constant
    plan = plan_for_ratio(find_groups(model, (x,)), 0.5)
    pruned = apply_plan(model, plan, (x,), "physical")
    with torch.no_grad():
        out = pruned.module(x)
    assert out.shape == (2, 1000)
    before, after = build_graph(model, x), build_graph(pruned.module, x)
    assert after.totals.params < 0.4 * before.totals.params
    assert after.totals.macs < 0.4 * before.totals.macs
    if name not in LAYERNORM_MODELS:
        assert spread(pruned.module, (x,)) > 20 * ATOL  # outputs that move with the input: the check can fail
        masked = apply_plan(model, pruned.plan, (x,), "mask")
        with torch.no_grad():
            torch.testing.assert_close(masked.module(x), out, atol=ATOL, rtol=ATOL)


def test_gpt2_half_heads_and_mlp_channels():
    from decomp import load_model

    loaded = load_model("hf:gpt2", input_shapes=[(1, 32)])
    model, inputs = loaded.module, loaded.example_inputs
    index = find_groups(model, inputs)
    assert sum(g.kind == "heads" for g in index) == 12 and len(index) == 24
    pruned = apply_plan(model, plan_for_ratio(index, 0.5), inputs, "physical")
    with torch.no_grad():
        out = pruned.module(*inputs).last_hidden_state
    assert out.shape == (1, 32, 768)
    assert all(block.attn.num_heads == 6 and block.mlp.c_fc.nf == 1536 for block in pruned.module.h)
    before = build_graph(model, inputs, tracer="export")
    after = build_graph(pruned.module, inputs, tracer="export")
    assert after.totals.macs == pytest.approx(before.totals.macs / 2, rel=0.01)  # all MACs are in the blocks
    assert after.totals.params < before.totals.params - 12 * 3_500_000


def test_shufflenet_prunes_its_branches_and_leaves_the_shuffled_channels_whole():
    # its channel shuffle is a reshape Torch-Pruning cannot map (it divides by a channel count of 0):
    # the model is pruned where the mapping holds, never refused as a whole, and the oracle passes
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    model = tvm.shufflenet_v2_x0_5().eval()
    index = find_groups(model, (x,))
    assert len(index) >= 10 and index.skipped
    assert all("reshape" in why for why in index.skipped.values()), index.skipped
    pruned = apply_plan(model, plan_for_ratio(index, 0.5), (x,), "physical", skip_failing=True)
    before, after = build_graph(model, x), build_graph(pruned.module, x)
    assert after.totals.macs < 0.7 * before.totals.macs


HF = {  # from their config classes, a few layers wide enough that the attention and MLP hold most MACs
    "bert": "hf:bert?num_hidden_layers=3&hidden_size=256&intermediate_size=1024&num_attention_heads=8&vocab_size=1000",
    "gpt2": "hf:gpt2?n_layer=3&n_embd=256&n_head=8&vocab_size=1000&n_positions=64",
    "t5": "hf:t5?num_layers=2&num_decoder_layers=2&d_model=256&d_ff=1024&num_heads=8&d_kv=32&vocab_size=1000",
    "llama": "hf:llama?num_hidden_layers=3&hidden_size=256&intermediate_size=688&num_attention_heads=8"
    "&num_key_value_heads=4&vocab_size=1000&max_position_embeddings=64",
    "vit": "hf:vit?num_hidden_layers=3&hidden_size=256&intermediate_size=1024&num_attention_heads=8&image_size=224",
}


@pytest.mark.parametrize("name", sorted(HF))
def test_hugging_face_half_heads_and_mlp_then_graph_split_and_export(tmp_path, name):
    from decomp import load_model
    from decomp.partition.export import export_split, verify_export
    from decomp.partition.plan import PartitionPlan
    from decomp.partition.split import split_model

    loaded = load_model(HF[name], input_shapes=None if name == "vit" else [(1, 32)])
    model, inputs = loaded.module, loaded.example_inputs
    index = find_groups(model, inputs)
    heads = [g for g in index if g.kind == "heads"]
    assert heads and len(index) > len(heads)  # heads and MLP channels
    pruned = apply_plan(model, plan_for_ratio(index, 0.5), inputs, "physical")  # the oracle checks the outputs
    kept = {g.group: len(g.keep) for g in pruned.plan.groups}
    assert all(kept[g.id] == g.channels // 2 for g in heads)
    before = build_graph(model, inputs, tracer="export")
    after = build_graph(pruned.module, inputs, tracer="export")
    assert after.totals.macs < 0.55 * before.totals.macs
    n = len(after.compute_nodes())
    split = split_model(pruned.module, inputs, PartitionPlan.pipeline(after, [n // 2]), tracer="export")
    folder = export_split(split, tmp_path / "export", source=HF[name], pruning_plan=pruned.plan)
    assert verify_export(folder, pruned.module, inputs) <= 1e-5
