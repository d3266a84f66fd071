"""Attention heads removed whole, and transformers' Conv1D layers, on a tiny GPT-2 built from its config."""

import pytest
import torch

from decomp import InvalidPlanError, build_graph, load_model
from decomp.pruning import GroupChoice, PruningPlan, apply_plan, channel_importance, find_groups, plan_for_ratio

SPEC = "hf:gpt2?n_layer=2&n_embd=32&n_head=4&vocab_size=50&n_positions=16"


@pytest.fixture(scope="module")
def gpt2():
    loaded = load_model(SPEC, input_shapes=[(2, 8)])
    return loaded.module, loaded.example_inputs


def _hidden(module, inputs):
    with torch.no_grad():
        return module(*inputs).last_hidden_state


def test_groups_are_heads_and_mlp_channels_not_the_residual_stream(gpt2):
    model, inputs = gpt2
    groups = {g.id: g for g in find_groups(model, inputs)}
    assert set(groups) == {"h.0.attn", "h.0.mlp.c_fc", "h.1.attn", "h.1.mlp.c_fc"}
    assert groups["h.0.attn"].kind == "heads" and groups["h.0.attn"].channels == 4
    assert groups["h.0.mlp.c_fc"].layers == (("h.0.mlp.c_fc", "out"), ("h.0.mlp.c_proj", "in"))


def test_removing_heads_matches_masking_them(gpt2):
    model, inputs = gpt2
    plan = PruningPlan(groups=(GroupChoice("h.0.attn", keep=(1, 3)), GroupChoice("h.1.mlp.c_fc", keep_ratio=0.25)))
    physical, masked = apply_plan(model, plan, inputs, "physical"), apply_plan(model, plan, inputs, "mask")
    attn = physical.module.h[0].attn
    assert attn.num_heads == 2 and attn.c_attn.weight.shape == (32, 3 * 16) and attn.c_proj.weight.shape == (16, 32)
    assert physical.module.h[1].mlp.c_fc.weight.shape == (32, 32)
    torch.testing.assert_close(_hidden(physical.module, inputs), _hidden(masked.module, inputs), atol=1e-5, rtol=1e-4)
    q_cols = model.h[0].attn.c_attn.weight[:, 8:16]  # head 1 of 4, head_dim 8, query block
    assert torch.equal(attn.c_attn.weight[:, :8], q_cols)
    k_cols = model.h[0].attn.c_attn.weight[:, 32 + 24 : 32 + 32]  # head 3's keys follow the kept queries
    assert torch.equal(attn.c_attn.weight[:, 24:32], k_cols)


def test_half_ratio_retraces_with_export_and_halves_block_macs(gpt2):
    model, inputs = gpt2
    pruned = apply_plan(model, plan_for_ratio(find_groups(model, inputs), 0.5), inputs)
    assert _hidden(pruned.module, inputs).shape == (2, 8, 32)
    before = build_graph(model, inputs, tracer="export")
    after = build_graph(pruned.module, inputs, tracer="export")
    assert after.totals.macs == pytest.approx(before.totals.macs / 2, rel=0.01)


def test_heads_rank_by_weight_magnitude(gpt2):
    model, inputs = gpt2
    index = find_groups(model, inputs)
    with torch.no_grad():
        model.h[1].attn.c_proj.weight[16:24].mul_(50)  # head 2's output rows
    try:
        assert int(channel_importance(index, "h.1.attn", "l1").argmax()) == 2
        with pytest.raises(InvalidPlanError, match="ranked by l1 or l2, not fpgm"):
            channel_importance(index, "h.1.attn", "fpgm")
    finally:
        with torch.no_grad():
            model.h[1].attn.c_proj.weight[16:24].div_(50)


def test_conv1d_layers_take_unstructured_and_n_m_along_their_inputs(gpt2):
    from decomp.pruning import LayerSparsity, sparse_size
    from decomp.pruning.unstructured import prunable_layers

    model, inputs = gpt2
    assert "h.0.mlp.c_fc" in prunable_layers(model)
    plan = PruningPlan(
        layers=(LayerSparsity("h.0.mlp.c_fc", pattern="2:4"), LayerSparsity("h.0.attn.c_proj", sparsity=0.5))
    )
    pruned = apply_plan(model, plan, inputs).module
    weight = pruned.h[0].mlp.c_fc.weight  # (in=32, out=128): groups of 4 consecutive inputs per output
    assert bool(((weight != 0).t().reshape(128, 8, 4).sum(-1) == 2).all())
    assert int((pruned.h[0].attn.c_proj.weight != 0).sum()) == 32 * 32 // 2
    assert sparse_size(pruned).nonzeros < sparse_size(model).nonzeros


# Other attention layouts, recognised by structure: BERT's query/key/value + output.dense, and the
# q/k/v/o projections of Llama (with grouped-query attention: a unit is a key/value head and the query
# heads that read it) and of Hugging Face's ViT.
LAYOUTS = {
    "bert": (
        "hf:bert?num_hidden_layers=1&hidden_size=32&intermediate_size=64&num_attention_heads=4&vocab_size=50",
        [(2, 8)],
    ),
    "llama": (
        "hf:llama?num_hidden_layers=1&hidden_size=32&intermediate_size=64&num_attention_heads=8"
        "&num_key_value_heads=4&vocab_size=50&max_position_embeddings=16",
        [(2, 8)],
    ),
    "vit": (
        "hf:vit?num_hidden_layers=1&hidden_size=32&intermediate_size=64&num_attention_heads=4&image_size=16&patch_size=8",
        [(2, 3, 16, 16)],
    ),
}
ATTENTION = {"bert": "encoder.layer.0.attention", "llama": "layers.0.self_attn", "vit": "layers.0.attention"}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_heads_of_other_layouts_are_removed_whole_and_match_masking(name):
    spec, shapes = LAYOUTS[name]
    loaded = load_model(spec, input_shapes=shapes)
    model, inputs = loaded.module, loaded.example_inputs
    index = find_groups(model, inputs)
    attention = ATTENTION[name]
    assert index[attention].kind == "heads" and index[attention].channels == 4
    assert not any(g.id.startswith(attention) and g.kind != "heads" for g in index)  # q/k/v not also channel groups
    plan = PruningPlan(groups=(GroupChoice(attention, keep=(0, 3)),))
    physical, masked = apply_plan(model, plan, inputs, "physical"), apply_plan(model, plan, inputs, "mask")
    torch.testing.assert_close(_hidden(physical.module, inputs), _hidden(masked.module, inputs), atol=1e-5, rtol=1e-4)
    module = physical.module.get_submodule(attention)
    query = {"bert": lambda m: m.self.query, "llama": lambda m: m.q_proj, "vit": lambda m: m.q_proj}[name](module)
    # bert, vit: a unit is one head of 8; llama: two query heads of 4 sharing a key/value head of 4
    assert query.weight.shape == (16, 32) and query.out_features == 16
    if name == "llama":
        assert module.k_proj.weight.shape == (8, 32) and module.num_key_value_groups == 2
        original = model.get_submodule(attention)
        assert torch.equal(module.q_proj.weight[8:], original.q_proj.weight[24:32])  # unit 3's query heads 6, 7
        assert torch.equal(module.k_proj.weight[4:], original.k_proj.weight[12:16])  # and its key head 3


def test_t5_heads_are_tied_across_a_stack_that_shares_one_position_bias():
    loaded = load_model(
        "hf:t5?num_layers=2&num_decoder_layers=2&d_model=32&d_ff=64&num_heads=4&d_kv=8&vocab_size=50",
        input_shapes=[(2, 6)],
    )
    model, inputs = loaded.module, loaded.example_inputs
    index = find_groups(model, inputs)
    heads = {g.id: g for g in index if g.kind == "heads"}
    assert set(heads) == {
        "encoder.block.0.layer.0.SelfAttention",
        "decoder.block.0.layer.0.SelfAttention",
        "decoder.block.0.layer.1.EncDecAttention",
    }
    assert heads["encoder.block.0.layer.0.SelfAttention"].head_modules == (
        "encoder.block.0.layer.0.SelfAttention",
        "encoder.block.1.layer.0.SelfAttention",
    )
    plan = PruningPlan(
        groups=(
            GroupChoice("encoder.block.0.layer.0.SelfAttention", keep=(1, 2)),
            GroupChoice("decoder.block.0.layer.1.EncDecAttention", keep=(0, 3)),
        )
    )
    physical, masked = apply_plan(model, plan, inputs, "physical"), apply_plan(model, plan, inputs, "mask")
    torch.testing.assert_close(_hidden(physical.module, inputs), _hidden(masked.module, inputs), atol=1e-5, rtol=1e-4)
    pruned = physical.module
    assert [b.layer[0].SelfAttention.n_heads for b in pruned.encoder.block] == [2, 2]
    bias = pruned.encoder.block[0].layer[0].SelfAttention.relative_attention_bias
    assert bias.weight.shape[1] == bias.embedding_dim == 2
    assert torch.equal(
        bias.weight, model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight[:, 1:3]
    )
    assert [b.layer[0].SelfAttention.n_heads for b in pruned.decoder.block] == [4, 4]  # its own group, kept
