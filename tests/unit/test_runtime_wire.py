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
