"""Which transport each part's outputs take (`cluster.runners._transports`): direct transports only between
parts on the devices they serve, the object store to the caller and across device kinds, NCCL only where each
part has its own GPU; a transport no part can use is refused by name."""

import pytest

from cluster.runners import _transports
from decomp.errors import DecompError
from decomp.partition import PartsLayout, PartSpec

PIPE = PartsLayout(
    ["x"], ["y"], [PartSpec("a", ["x"], ["h"]), PartSpec("b", ["h"], ["g"]), PartSpec("c", ["g"], ["y"])]
)
GPUS, CPUS = ["cuda"] * 3, ["cpu"] * 3


@pytest.mark.parametrize(
    ("devices", "asked", "shared", "want"),
    [
        (GPUS, "auto", False, ["nccl", "nccl", "object-store"]),
        (GPUS, "auto", True, ["object-store"] * 3),  # parts share GPUs: no NCCL between them
        (CPUS, "auto", False, ["object-store"] * 3),  # measured faster on CPU than gloo here
        (CPUS, "gloo", False, ["gloo", "gloo", "object-store"]),
        (["cpu", "cuda", "cuda"], "auto", False, ["object-store", "nccl", "object-store"]),
        (GPUS, "object-store", False, ["object-store"] * 3),
    ],
)
def test_each_part_takes_the_transport_its_readers_allow(devices, asked, shared, want):
    assert _transports(PIPE, devices, asked, shared_gpus=shared) == want


def test_a_part_read_by_the_caller_and_a_part_uses_the_object_store():
    layout = PartsLayout(["x"], ["h", "y"], [PartSpec("a", ["x"], ["h"]), PartSpec("b", ["h"], ["y"])])
    assert _transports(layout, ["cpu", "cpu"], "auto") == ["object-store", "object-store"]
    with pytest.raises(DecompError, match="no part here sends its outputs to another CPU part only"):
        _transports(layout, ["cpu", "cpu"], "gloo")


@pytest.mark.parametrize(
    ("devices", "asked", "shared", "message"),
    [
        (CPUS, "nccl", False, "transport nccl carries tensors between GPU parts, and no part here sends"),
        (GPUS, "gloo", False, "transport gloo carries tensors between CPU parts"),
        (GPUS, "nccl", True, "the cluster has fewer GPUs than parts"),
    ],
)
def test_a_transport_no_part_can_use_is_refused(devices, asked, shared, message):
    with pytest.raises(DecompError, match=message):
        _transports(PIPE, devices, asked, shared_gpus=shared)
