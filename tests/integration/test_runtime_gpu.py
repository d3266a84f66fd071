"""NCCL between parts on distinct GPUs (Ray Direct Transport): outputs equal the in-process runner's. Runs
where torch sees at least 2 GPUs (`pytest -m ray` on a GPU machine); skipped elsewhere, CI included."""

import pytest
import torch
from torch import nn

from cluster.runners import RayRunner, loaders_for
from decomp.partition import PartsLayout, PartSpec, run_local

pytestmark = [
    pytest.mark.ray,
    pytest.mark.usefixtures("local_ray"),
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs"),
]


def test_nccl_between_gpu_parts_gives_the_in_process_outputs():
    torch.manual_seed(0)
    layout = PartsLayout(["x"], ["y"], [PartSpec("a", ["x"], ["h"]), PartSpec("b", ["h"], ["y"])])
    modules = [nn.Linear(64, 256), nn.Linear(256, 8)]
    batches = [[torch.randn(16, 64)] for _ in range(4)]
    with RayRunner(layout, loaders_for(modules), transport="nccl") as runner:
        assert runner.transports == ["nccl", "object-store"] and runner.devices == ["cuda", "cuda"]
        got = list(runner.map(batches))
    for (y,), (x,) in zip(got, batches, strict=True):
        assert (y - run_local(layout, modules, x)[0]).abs().max() <= 1e-5
