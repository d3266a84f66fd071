"""Where the parts run: a plan naming nodes puts each part on its node of a real two-node cluster (`ray start
--head` plus a node joining it), the report says where each ran, and a cluster that cannot hold the plan is
refused with what it lacks."""

from __future__ import annotations

import pytest
import ray
import torch
from torch import nn

from cluster.runners import RayRunner, RuntimeFailure, loaders_for
from cluster.runtime import measure
from decomp.partition import PartsLayout, PartSpec, run_local
from tests.ray_cluster import ray_head, ray_node

pytestmark = [pytest.mark.ray]

LAYOUT = PartsLayout(["x"], ["y"], [PartSpec("p0", ["x"], ["h"]), PartSpec("p1", ["h"], ["y"])])


def _modules():
    torch.manual_seed(0)
    return [nn.Linear(4, 4), nn.Linear(4, 2)]


def test_parts_run_on_the_nodes_the_plan_names():
    with ray_head(resources={"decomp-node-n0": 1}) as head:
        ray.init(address=head["address"], logging_level="ERROR")
        try:
            with ray_node(head["address"], head["env"], {"decomp-node-n1": 1}):
                modules = _modules()
                x = torch.randn(3, 4)
                for devices in (["n1/cpu", "n0/cpu"], ["n0/cpu", "n1/cpu"]):
                    with RayRunner(LAYOUT, loaders_for(modules), devices=devices) as runner:
                        report, (y,) = measure(runner, [x], batches=2)
                    assert report.nodes == tuple(d.split("/")[0] for d in devices)
                    torch.testing.assert_close(y, run_local(LAYOUT, modules, x)[0])
                with pytest.raises(RuntimeFailure, match=r"no node has decomp-node-n2 \(start the node"):
                    RayRunner(LAYOUT, loaders_for(modules), devices=["n2/cpu", "n0/cpu"], wait_s=3)
                fits = r"the parts need CPU 3 \(STRICT_PACK, on one node\); the nodes have "
                fits += "(n0: CPU 2; n1: CPU 1|n1: CPU 1; n0: CPU 2)"
                with pytest.raises(RuntimeFailure, match=fits):
                    RayRunner(LAYOUT, loaders_for(modules), threads=2, placement="STRICT_PACK", wait_s=3)
        finally:
            ray.shutdown()


@pytest.mark.usefixtures("local_ray")
def test_replicas_share_the_micro_batches_and_keep_their_order():
    modules = _modules()
    batches = [[torch.randn(2, 4)] for _ in range(8)]
    with RayRunner(LAYOUT, loaders_for(modules), replicas=2, max_in_flight=4) as runner:
        got = list(runner.map(batches))
        stats = runner.stats()
    assert [s["calls"] for s in stats] == [4, 4, 4, 4]  # replica after replica, part after part
    for (y,), (x,) in zip(got, batches, strict=True):
        torch.testing.assert_close(y, run_local(LAYOUT, modules, x)[0])
