"""Real architectures: torchvision classification models and Hugging Face models built from their configs."""

import networkx as nx
import pytest
import torchvision.models as tvm
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from decomp import build_graph, load_model
from decomp.coarsen import coarsen

pytestmark = pytest.mark.slow

# residual, concat, depthwise, squeeze-excite, grouped, shuffle, attention, windowed attention
BROAD = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "vit_b_16",
    "alexnet",
    "vgg11",
    "squeezenet1_0",
    "densenet121",
    "googlenet",
    "inception_v3",
    "resnext50_32x4d",
    "shufflenet_v2_x1_0",
    "mnasnet0_5",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "convnext_tiny",
    "swin_t",
    "swin_v2_t",
    "maxvit_t",
    "vit_b_32",
]


def _reference_macs(model, inputs) -> int:
    """An independent count: torch's aten-level FLOP counter (math attention so it is seen), halved."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(*inputs)  # grad enabled: MHA takes its decomposed path, which the counter sees
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", BROAD)
def test_torchvision_graph_matches_published_figures(name):
    loaded = load_model(f"torchvision:{name}")
    graph = build_graph(loaded.module, loaded.example_inputs, name=name)
    meta = tvm.get_model_weights(name).DEFAULT.meta
    every_param = sum(p.numel() for p in loaded.module.parameters())
    assert graph.totals.params + graph.nx.graph["unused_params"] == every_param
    # published counts include inception's auxiliary head but not googlenet's
    published_params = graph.totals.params + (graph.nx.graph["unused_params"] if name == "inception_v3" else 0)
    assert published_params == meta["num_params"]
    assert graph.totals.macs == pytest.approx(meta["_ops"] * 1e9, rel=0.01)
    blocks = coarsen(graph, blocks=8)
    assert nx.is_directed_acyclic_graph(blocks.nx) and blocks.sum("macs") == graph.totals.macs


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "vit_b_16", "densenet121", "swin_t"])
def test_torchvision_macs_agree_with_independent_counter(name):
    loaded = load_model(f"torchvision:{name}")
    graph = build_graph(loaded.module, loaded.example_inputs)
    assert graph.totals.macs == pytest.approx(_reference_macs(loaded.module, loaded.example_inputs), rel=0.01)


@pytest.mark.parametrize("spec", ["hf:gpt2", "hf:bert"])
def test_hugging_face_models_from_config(spec):
    loaded = load_model(spec, input_shapes=[(2, 64)])
    graph = build_graph(loaded.module, loaded.example_inputs, tracer=loaded.tracer, name=spec)
    assert graph.nx.graph["inputs"] == [{"name": "input_ids", "shape": [2, 64], "dtype": "int64"}]
    assert graph.totals.params == sum(p.numel() for p in loaded.module.parameters())
    assert graph.totals.macs == pytest.approx(_reference_macs(loaded.module, loaded.example_inputs), rel=0.01)
    prefix = "h." if spec == "hf:gpt2" else "encoder.layer."
    layers = {graph[n]["module"][len(prefix) :].split(".")[0] for n in graph if graph[n]["module"].startswith(prefix)}
    assert len(layers) == 12
    blocks = coarsen(graph, depth=2)
    assert nx.is_directed_acyclic_graph(blocks.nx) and blocks.sum("params") == graph.totals.params


def test_small_gpt2_from_options():
    loaded = load_model("hf:gpt2?n_layer=2&n_embd=64&n_head=4", input_shapes=[(1, 16)])
    graph = build_graph(loaded.module, loaded.example_inputs, tracer="export")
    assert graph.totals.params == sum(p.numel() for p in loaded.module.parameters())
    qkv = [n for n in graph if graph[n]["module"] == "h.0.attn.c_attn" and graph[n]["macs"]]
    assert [graph[n]["macs"] for n in qkv] == [16 * 64 * 192]


def test_cli_on_torchvision_model(tmp_path):
    from typer.testing import CliRunner

    from cluster.cli import app

    out = tmp_path / "r18.json"
    result = CliRunner().invoke(app, ["graph", "torchvision:resnet18", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "layer4" in result.output and "11,689,512" in result.output
    assert '"macs": 1814073344' in out.read_text()
