"""Width splits of real models through the Ray runtime: resnet50's consecutive convolutions and GPT-2's (124M,
traced with torch.export) attention and MLP blocks, split in 2 and 4 ways by `decomp split --width`,
exported and run with one Ray actor per part (1 thread each): the outputs equal the unsplit model's (float32,
max abs diff <= 1e-4) on inputs other than the ones the export was checked on."""

import pytest
import torch

from cluster.runners import RayRunner, export_loaders
from cluster.runtime import export_inputs
from decomp.partition import flat_outputs, manifest_layout, read_manifest
from decomp.partition.job import SplitRequest, run_split
from decomp.partition.width import WidthSplit
from decomp.specs import load_model

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.usefixtures("local_ray")]
RAY_CPUS = 8

CASES = {
    "resnet50": (
        "torchvision:resnet50",
        (("layer1.0.conv1", "layer1.0.conv2"), ("layer3.2.conv2", "layer3.2.conv3")),
        (),
    ),
    "gpt2": ("hf:gpt2", (("h.0.attn", None), ("h.0.mlp", None), ("h.11.mlp", None)), ((1, 64),)),
}


@pytest.mark.parametrize(("name", "ways"), [("resnet50", 2), ("resnet50", 4), ("gpt2", 2), ("gpt2", 4)])
def test_width_split_exports_of_real_models_run_on_ray(tmp_path, name, ways):
    spec, pairs, shapes = CASES[name]
    width = tuple(WidthSplit(layer, ways, then) for layer, then in pairs)
    summary = run_split(SplitRequest(spec, ways, "dag", input_shapes=shapes, width=width), tmp_path / "out")
    assert summary.max_abs_diff <= 1e-4 and summary.plan.parts == len(pairs) * ways
    manifest = read_manifest(tmp_path / "out")
    inputs = export_inputs(manifest, 1, seed=7)
    with torch.no_grad():
        expected = flat_outputs(load_model(spec, input_shapes=list(shapes) or None).module.eval()(*inputs))
    with RayRunner(manifest_layout(manifest), export_loaders(tmp_path / "out")) as runner:
        (got,) = list(runner.map([inputs]))
        stats = runner.stats()
    got = got if isinstance(got, tuple) else (got,)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert len({s["pid"] for s in stats}) == summary.plan.parts  # one actor per part
