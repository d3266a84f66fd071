"""Seconds of an op that was never timed, learned from the ops that were: a per-device model fitted on an
op table (`OpModel.fit(table)`), so a graph of an architecture nobody profiled on this device is priced
from what this device showed on other ops, not from a peak FLOP/s and bandwidth that small ops never
reach.

What an op costs on a CPU is far from its roofline: a convolution with few channels or a small spatial
extent reaches a tenth of the peak rate a large one does, a depthwise convolution is bound by memory,
an elementwise op's time depends on what it computes per element (GELU, SiLU and Hardswish cost several
times a ReLU), and every call pays an overhead that dominates the many tiny ops of mobile networks
(squeeze-excite pools and scales, activations on 1x1 maps, views). The model learns each of these from
the table's entries:

- the *work* of an op: its multiply-accumulates for convolutions and matrix products, else the bytes
  it reads and writes;
- what it learns is the op's seconds per unit of work (log scale) as a function of the op's class
  (convolution, matrix product, normalisation, pooling, elementwise, transcendental activation, view),
  its own kind (module class or function, where the table saw it), how it is called (module, function,
  method: the call overhead differs), its work, its reduction length (MACs per output element: 9 for
  a 3x3 depthwise convolution, thousands for a dense one), its channel, row and batch extents;
- with gradient-boosted trees (`sklearn.ensemble.HistGradientBoostingRegressor`): an op beyond the
  sizes the table covers keeps the rate of the nearest ones it does cover, so its time grows with its
  work instead of being clipped.

Everything is read off the op's signature (`decomp.latency.table.op_signature`), so the table is the
training set as it is; `decomp.latency.sweep` adds a sweep of synthetic layers (no architecture) that
covers the shapes real networks use. BENCHMARKS.md (latency on new architectures) measures it on
torchvision architectures none of it was fitted on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from decomp.errors import GraphError

__all__ = ["MIN_ENTRIES", "OpModel", "op_class"]

MIN_ENTRIES = 50  # a table with fewer entries is too small to learn from: the roofline stays

_GEMM = {
    "Linear",
    "Bilinear",
    "MultiheadAttention",
    "linear",
    "matmul",
    "mm",
    "bmm",
    "addmm",
    "baddbmm",
    "einsum",
    "scaled_dot_product_attention",
}
_VIEW = {
    "view",
    "reshape",
    "flatten",
    "Flatten",
    "Unflatten",
    "unflatten",
    "permute",
    "transpose",
    "getitem",
    "size",
    "dim",
    "chunk",
    "split",
    "unbind",
    "expand",
    "squeeze",
    "unsqueeze",
    "getattr",
    "eq",
    "floordiv",
    "Dropout",
    "Identity",
    "type_as",
    "to",
}
_TRANSCENDENTAL = {
    "GELU",
    "gelu",
    "SiLU",
    "silu",
    "Sigmoid",
    "sigmoid",
    "Tanh",
    "tanh",
    "Softmax",
    "softmax",
    "LogSoftmax",
    "log_softmax",
    "Hardswish",
    "hardswish",
    "Hardsigmoid",
    "hardsigmoid",
    "Mish",
    "mish",
    "ELU",
    "elu",
    "exp",
    "erf",
    "Softplus",
    "softplus",
}
CLASSES = ("conv", "gemm", "norm", "pool", "transcendental", "view", "elementwise")


def op_class(what: str) -> str:
    """The class of an op from the first field of its signature (a module class name, or `name:target`
    for a function or method)."""
    name = what.split(":", 1)[0]
    if name.startswith(("Conv", "conv")):
        return "conv"
    if name in _GEMM or name.startswith(("LSTM", "GRU", "RNN")):
        return "gemm"
    if "Norm" in name or "norm" in name:
        return "norm"
    if "Pool" in name or "pool" in name or name in {"mean", "sum", "amax", "max", "min"}:
        return "pool"
    if name in _TRANSCENDENTAL:
        return "transcendental"
    if name in _VIEW:
        return "view"
    return "elementwise"


def _call(what: str) -> int:
    if ":" not in what:
        return 0
    target = what.split(":", 1)[1]
    # methods are recorded by their bare name (`view`), functions with their module (`torch.permute`)
    return 1 if "." in target else 2


def _elements(shape: object) -> int:
    """Elements of a tensor shape, or of every tensor in a list of shapes (several outputs)."""
    if not isinstance(shape, list):
        return 0
    if not shape or all(isinstance(v, int) for v in shape):
        return math.prod(shape)
    return sum(_elements(s) for s in shape)


_ITEMSIZE = {"float64": 8, "int64": 8, "complex64": 8, "float16": 2, "bfloat16": 2, "int16": 2, "int8": 1, "uint8": 1}


def _itemsize(dtype: object) -> int:
    name = dtype[0] if isinstance(dtype, list) and dtype else dtype
    return _ITEMSIZE.get(str(name).removeprefix("torch."), 4)


class _Parsed:
    """The numbers the model reads off one signature."""

    __slots__ = ("cls", "features", "kind", "work")

    def __init__(self, signature: str) -> None:
        try:
            what, ins, out, dtype, params, macs = json.loads(signature)
        except (ValueError, TypeError) as err:
            raise GraphError(f"op table entry {signature[:80]!r} is not an op signature: {err}") from None
        size = _itemsize(dtype)
        in_bytes = sum(_elements(s) for s in ins) * size
        out_elements = _elements(out)
        out_bytes = out_elements * size
        flat = out if isinstance(out, list) and out and all(isinstance(v, int) for v in out) else [out_elements]
        last = flat[-1] if flat else 1
        first = ins[0] if ins and isinstance(ins[0], list) and all(isinstance(v, int) for v in ins[0]) else []
        in_channels = first[1] if len(first) > 1 else 1
        macs = float(macs or 0)
        reduction = macs / max(out_elements, 1)  # MACs per output element: Cin/groups x kernel area
        self.kind = what.split(":", 1)[0]
        self.cls = op_class(what)
        if self.cls == "elementwise" and macs > 0:
            self.cls = "gemm"  # a function the class table does not know that multiplies and adds (an attention)
        moved = in_bytes + out_bytes + float(params or 0) * size
        self.work = macs if self.cls in ("conv", "gemm") and macs > 0 else max(moved, 1.0)
        log = math.log1p
        self.features = [
            CLASSES.index(self.cls),
            _call(what),
            log(self.work),
            log(macs),
            log(in_bytes),
            log(out_bytes),
            log(float(params or 0)),
            log(reduction),
            log(in_channels),
            log(reduction / in_channels),  # kernel area / groups for a convolution: dense, grouped, depthwise
            log(flat[1] if len(flat) > 1 else 1),  # channels (NCHW) or rows
            log(max(out_elements, 1) / max(last, 1)),  # rows of a matrix product, or N*C*H of a conv
            log(last),
            log(flat[0] if flat else 1),  # batch
            float(len(flat)),
            float(len(ins)),
        ]


class OpModel:
    """Seconds per op signature for one device, fitted on an op table of that device (`fit`)."""

    def __init__(self, device: str, regressor: object, kinds: Sequence[str]) -> None:
        self.device = device
        self.regressor = regressor
        self.kinds = {k: i for i, k in enumerate(kinds)}

    def _matrix(self, parsed: Sequence[_Parsed]) -> np.ndarray:
        rows = [[self.kinds.get(p.kind, np.nan), *p.features] for p in parsed]
        return np.asarray(rows, dtype=np.float64)

    @classmethod
    def fit(cls, table: object, seed: int = 0) -> OpModel:
        """Learn seconds per unit of work from every entry of `table` (an `OpTable`). Deterministic."""
        from sklearn.ensemble import HistGradientBoostingRegressor

        entries = table.entries
        if len(entries) < MIN_ENTRIES:
            raise GraphError(
                f"op table of {table.device!r} has {len(entries)} entries; an op model needs at least {MIN_ENTRIES} "
                "(profile a model or the layer sweep on this device first: decomp profile --sweep)"
            )
        parsed = [_Parsed(s) for s in entries]
        kinds = sorted({p.kind for p in parsed})[:250]  # categorical codes must stay below the bin count
        model = cls(table.device, None, kinds)
        x = model._matrix(parsed)
        y = np.log(np.maximum(np.fromiter(entries.values(), float), 1e-9) / np.array([p.work for p in parsed]))
        model.regressor = HistGradientBoostingRegressor(
            max_iter=400,
            learning_rate=0.05,
            min_samples_leaf=5,
            categorical_features=[0, 1, 2],
            early_stopping=False,
            random_state=seed,
        ).fit(x, y)
        return model

    def predict(self, signatures: Sequence[str]) -> list[float]:
        """Seconds of each signature's op on the device the table was measured on."""
        if not signatures:
            return []
        parsed = [_Parsed(s) for s in signatures]
        rate = np.exp(self.regressor.predict(self._matrix(parsed)))
        return [float(r * p.work) for r, p in zip(rate, parsed, strict=True)]
