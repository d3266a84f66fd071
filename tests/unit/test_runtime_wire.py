"""Tensors cross Ray's object store as numpy arrays (`to_wire` / `from_wire`), bit for bit."""

import warnings

import numpy as np
import pytest
import torch

from cluster.runners import from_wire, to_wire


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.int64, torch.uint8, torch.bool])
def test_cpu_tensors_travel_as_numpy_and_come_back_equal(dtype):
    t = (torch.randn(2, 3, 4) * 10).to(dtype).transpose(1, 2)  # not contiguous: sent contiguous
    wired = to_wire(t)
    assert isinstance(wired, np.ndarray) and wired.flags.c_contiguous
    back = from_wire(wired)
    assert back.dtype == dtype and torch.equal(back, t)


def test_what_numpy_cannot_hold_travels_as_it_is():
    bf = torch.randn(3).to(torch.bfloat16)
    assert to_wire(bf) is bf and to_wire(7) == 7 and to_wire(None) is None
    assert from_wire(bf) is bf and from_wire((1, 2)) == (1, 2)


def test_read_only_arrays_are_used_in_place_and_copied_for_the_caller():
    array = np.arange(6, dtype=np.float32)
    array.flags.writeable = False  # as Ray hands out arrays from shared memory
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not writable" warning reaches the user
        shared = from_wire(array)
    assert shared.data_ptr() == array.ctypes.data  # no copy inside a worker
    mine = from_wire(array, copy=True)
    assert mine.data_ptr() != array.ctypes.data and torch.equal(mine, shared)
    mine += 1  # the caller's copy is writable and separate
    assert float(shared[0]) == 0.0


def test_activations_with_closed_channels_travel_without_them():
    from cluster.runners import ChannelSparse, wire_bytes

    t = torch.randn(3, 8, 4, 4)
    t[:, [0, 2, 3, 5, 7]] = 0  # 5 of 8 channels zero for every input
    t[1, 1] = 0  # one input's channel 1 is zero, the others' is not: channel 1 is sent
    wired = to_wire(t, sparse=True)
    assert isinstance(wired, ChannelSparse) and wired.channels.tolist() == [1, 4, 6]
    assert wire_bytes(wired) == 3 * 3 * 16 * 4 + 3 * 8 and wire_bytes(to_wire(t)) == 3 * 8 * 16 * 4
    assert torch.equal(from_wire(wired), t)
    # at most half the channels zero, a tensor without channels, or sparse off: dense
    t[:, [0, 2, 3, 5, 7]] = 1.0
    t[:, :4] = 0
    assert isinstance(to_wire(t, sparse=True), ChannelSparse)
    t[:, 3] = 1.0
    assert isinstance(to_wire(t, sparse=True), np.ndarray)
    assert isinstance(to_wire(torch.zeros(4, 8), sparse=True), np.ndarray)
    assert isinstance(to_wire(torch.zeros(2, 8, 3)), np.ndarray)
