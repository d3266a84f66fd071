"""Width splits of real models: resnet50's consecutive convolutions, vit_b_16's attention heads and MLP, and
GPT-2's (124M, traced with torch.export) attention and MLP blocks, in 2 and 4 ways, through export: outputs
equal the unsplit model, and the bytes the parts receive are the bytes the cost model counts."""

import pytest
import torch
import torchvision.models as tvm

from decomp import build_graph
from decomp.partition import partition_metrics, split_model
from decomp.partition.job import WIDTH_TOLERANCE, export_verified
from decomp.partition.width import WidthSplit, split_width, width_plan

pytestmark = pytest.mark.slow

LAYER = "encoder.layers.encoder_layer_{}."
CASES = {
    "resnet50": (
        tvm.resnet50,
        [("layer1.0.conv1", "layer1.0.conv2"), ("layer3.2.conv2", "layer3.2.conv3"), ("fc", None)],
    ),
    "vit_b_16": (
        tvm.vit_b_16,
        [
            (LAYER.format(0) + "self_attention", None),
            (LAYER.format(0) + "mlp.0", LAYER.format(0) + "mlp.3"),
            (LAYER.format(11) + "self_attention", None),
            (LAYER.format(11) + "mlp.0", LAYER.format(11) + "mlp.3"),
        ],
    ),
}


@pytest.mark.parametrize("ways", [2, 4])
@pytest.mark.parametrize("name", list(CASES))
def test_width_splits_of_real_models_export_and_match(tmp_path, name, ways):
    factory, pairs = CASES[name]
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(1, 3, 224, 224)
    if name == "vit_b_16":
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts it at zero
    split = split_width(model, x, [WidthSplit(layer, ways, then) for layer, then in pairs])
    graph = build_graph(split.module, x)
    plan = width_plan(graph, split)
    parts = split_model(split.module, (x,), plan)
    folder, diff = export_verified(parts, tmp_path / "out", model, WIDTH_TOLERANCE)
    assert diff <= 1e-4 and len(list(folder.glob("part_*.pt2"))) == plan.parts
    tensors = parts.tensors(x)
    received = sum(tensors[n].numel() * tensors[n].element_size() for p in parts.layout.parts for n in p.inputs)
    assert partition_metrics(graph, plan).comm_bytes == received


@pytest.mark.parametrize("ways", [2, 4])
def test_gpt2_blocks_split_across_parts_export_and_match(tmp_path, ways):
    from decomp.partition.job import SplitRequest, run_split

    blocks = ("h.0.attn", "h.0.mlp", "h.11.attn", "h.11.mlp")
    request = SplitRequest(
        "hf:gpt2", ways, "dag", input_shapes=((1, 64),), width=tuple(WidthSplit(b, ways) for b in blocks)
    )
    summary = run_split(request, tmp_path / "out")
    assert summary.max_abs_diff <= 1e-4 and summary.plan.parts == len(blocks) * ways
