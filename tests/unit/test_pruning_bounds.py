"""Group discovery under time and memory bounds: a group whose enumeration runs too long is left out
with the reason, a discovery past its cap ends in a clear error, and the timer is gone afterwards."""

import signal
import time

import pytest
import torch
import torch_pruning as tp
from torch import nn

from decomp import TracingError
from decomp.pruning import bounds, find_groups
from decomp.pruning.bounds import DiscoveryLimit, GroupLimit, bounded


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.conv2(self.conv1(x).relu()).relu().mean((2, 3)))


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_body_past_the_cap_is_stopped_and_the_timer_removed():
    with pytest.raises(DiscoveryLimit, match="ran past its 0.3 s cap"), bounded(seconds=0.3, memory_bytes=None):
        _spin(5)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_memory_growth_past_the_cap_is_stopped():
    with pytest.raises(DiscoveryLimit, match="memory grew"), bounded(seconds=30, memory_bytes=64 * 2**20):
        _held = [torch.ones(2**20) for _ in range(64)]  # 256 MiB, touched
        _spin(1)


def test_a_group_past_its_share_is_interrupted_and_the_discovery_goes_on():
    with bounded(seconds=30, memory_bytes=None) as b:
        with pytest.raises(GroupLimit, match="ran past 0.3 s"), b.group(0.3):
            _spin(5)
        _spin(0.5)  # no group deadline left behind


def test_find_groups_leaves_out_a_group_whose_enumeration_runs_too_long(monkeypatch):
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    original = tp.DependencyGraph.get_pruning_group

    def slow(self, module, fn, idxs):
        if module is model.conv1:
            _spin(30)
        return original(self, module, fn, idxs)

    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", slow)
    monkeypatch.setattr(bounds, "GROUP_SECONDS", 0.5)
    index = find_groups(model, (x,))
    assert "ran past 0.5 s" in index.skipped["conv1"] and "conv1" not in index
    assert "conv2" in index  # the rest is found


def test_find_groups_past_the_discovery_cap_is_a_clear_error(monkeypatch):
    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    original = tp.DependencyGraph.get_pruning_group

    def slow(self, module, fn, idxs):
        _spin(30)
        return original(self, module, fn, idxs)

    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", slow)
    monkeypatch.setattr(bounds, "DISCOVERY_SECONDS", 0.5)
    with pytest.raises(TracingError, match="stopped: it ran past its 0.5 s cap.*Unstructured pruning"):
        find_groups(model, (x,))


def test_a_group_whose_enumeration_grows_memory_too_far_is_left_out_and_its_memory_freed(monkeypatch):
    import weakref

    model, x = Net().eval(), torch.randn(1, 3, 8, 8)
    names = {id(m): n for n, m in model.named_modules()}
    original = tp.DependencyGraph.get_pruning_group
    made, hungry_root, alive_later = [], [], []

    def hungry(self, module, fn, idxs):
        if not hungry_root:  # the first group enumerated, whichever it is
            hungry_root.append(names[id(module)])
            first = torch.ones(2**20)
            made.append(weakref.ref(first))  # before the rest: the bound may stop it while it allocates
            held = [first, *(torch.ones(2**20) for _ in range(95))]  # 384 MiB, touched
            _spin(30)
            del held
        else:  # a later group: what the interrupted one built must be gone by now, not at the end
            alive_later.append(made[0]() is not None)
        return original(self, module, fn, idxs)

    monkeypatch.setattr(tp.DependencyGraph, "get_pruning_group", hungry)
    monkeypatch.setattr(bounds, "GROUP_MEMORY", 128 * 2**20)
    index = find_groups(model, (x,))
    assert "grew memory by" in index.skipped[hungry_root[0]] and hungry_root[0] not in index
    assert alive_later and not any(alive_later)  # nothing kept what the interrupted enumeration held
