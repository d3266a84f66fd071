"""Per-node cost rules: op kind, output tensors, and multiply-accumulates (MACs).

MACs follow the convention of torchvision's published figures and fvcore: convolutions, linear
layers, matrix products, attention and einsum count; element-wise ops, norms and pooling count 0.
The rules read both fx graphs (module calls) and torch.export graphs (ATen calls) by op name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

__all__ = ["op_kind", "module_path", "resolve_attr", "tensors_of", "node_tensors", "node_macs", "is_opaque"]

# functions from these modules are elementary ops: the rules below price them without running them
_ELEMENTARY = ("torch", "_operator", "operator", "builtins", "math", "_tensor")
# modules the rules price exactly (everything else with children is opaque and measured)
_RULED_MODULES = (nn.modules.conv._ConvNd, nn.Linear, nn.Bilinear, nn.MultiheadAttention, nn.RNNBase)

Shape = tuple[int, ...]


def op_kind(node: fx.Node, gm: fx.GraphModule) -> str:
    """A short, stable name of what the node does: `Conv2d`, `linear`, `add`, `getitem`, ..."""
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_function":
        target = getattr(node.target, "overloadpacket", node.target)  # ATen OpOverload -> its packet
        return getattr(target, "__name__", str(target))
    if node.op == "call_method":
        return str(node.target)
    return node.op


def module_path(node: fx.Node) -> str:
    """Dotted path of the module an op belongs to ('' at the root), from the tracer's module stack."""
    if node.op == "call_module":
        return str(node.target)
    if node.op == "get_attr":
        return str(node.target).rpartition(".")[0]
    stack = node.meta.get("nn_module_stack")
    return list(stack.values())[-1][0] if stack else ""


def tensors_of(value: Any) -> list[tuple[Shape, torch.dtype]]:
    """Flatten a node's recorded output (TensorMetadata, FakeTensor or containers) to (shape, dtype) pairs."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [(tuple(value.shape), value.dtype)]
    if hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "stride"):  # TensorMetadata
        return [(tuple(value.shape), value.dtype)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_of(v)]
    return []


def node_tensors(node: fx.Node) -> list[tuple[Shape, torch.dtype]]:
    meta = node.meta
    return tensors_of(meta["tensor_meta"] if "tensor_meta" in meta else meta.get("val"))


def _shape(arg: Any, gm: fx.GraphModule) -> Shape | None:
    if isinstance(arg, fx.Node):
        found = node_tensors(arg)
        if found:
            return found[0][0]
        if arg.op == "get_attr":
            return tuple(resolve_attr(gm, arg.target).shape)
    if isinstance(arg, torch.Tensor):
        return tuple(arg.shape)
    return None


def resolve_attr(gm: fx.GraphModule, target: str) -> Any:
    """The tensor or module a `get_attr` target names."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _arg(node: fx.Node, index: int, name: str) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


def _numel(shape: Shape | None) -> int:
    return math.prod(shape) if shape is not None else 0


def _conv_macs(in_shape: Shape, out_shape: Shape, weight: Shape, transposed: bool) -> int:
    # weight: (out, in/groups, *k) for conv, (in, out/groups, *k) for transposed conv
    per_position = weight[1] * math.prod(weight[2:])
    return (_numel(in_shape) if transposed else _numel(out_shape)) * per_position


def _mha_macs(m: nn.MultiheadAttention, q: Shape, k: Shape) -> int:
    if len(q) == 2:  # unbatched (L, E)
        q, k = (1, *q), (1, *k)
    if not m.batch_first:
        q, k = (q[1], q[0], q[2]), (k[1], k[0], k[2])
    n, length, e = q
    source = k[1]
    projections = n * (length * e * e + source * m.kdim * e + source * m.vdim * e + length * e * e)
    attention = n * length * source * e * 2  # scores and weighted sum, over all heads
    return projections + attention


def _rnn_macs(m: nn.RNNBase, in_shape: Shape) -> int:
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
    steps = math.prod(in_shape[:-1])  # sequence x batch
    directions = 2 if m.bidirectional else 1
    hidden = m.proj_size or m.hidden_size
    total = 0
    for layer in range(m.num_layers):
        width = m.input_size if layer == 0 else hidden * directions
        per = gates * m.hidden_size * (width + hidden) + (m.hidden_size * m.proj_size if m.proj_size else 0)
        total += steps * per * directions
    return total


def _module_macs(node: fx.Node, gm: fx.GraphModule, out: Shape | None) -> int:
    m = gm.get_submodule(node.target)
    x = _shape(_arg(node, 0, "input"), gm)
    if isinstance(m, nn.modules.conv._ConvNd):
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        return _conv_macs(x, out, tuple(m.weight.shape), transposed)
    if isinstance(m, nn.Linear):
        return _numel(out) * m.in_features
    if isinstance(m, nn.Bilinear):
        return _numel(out) * m.in1_features * m.in2_features
    if isinstance(m, nn.MultiheadAttention):
        return _mha_macs(m, x, _shape(_arg(node, 1, "key"), gm))
    if isinstance(m, nn.RNNBase) and x is not None:
        return _rnn_macs(m, x)
    return 0


def _inner_dim(node: fx.Node, gm: fx.GraphModule, index: int) -> int:
    a = _shape(node.args[index], gm)
    return a[-1] if a else 0


def _conv_fn(node: fx.Node, gm: fx.GraphModule, out: Shape) -> int:
    weight = _shape(_arg(node, 1, "weight"), gm)
    transposed = bool(_arg(node, 6, "transposed")) if op_kind(node, gm) == "convolution" else False
    transposed = transposed or op_kind(node, gm).startswith("conv_transpose")
    return _conv_macs(_shape(node.args[0], gm), out, weight, transposed)


def _sdpa(node: fx.Node, gm: fx.GraphModule, out: Shape) -> int:
    q, k, v = (_shape(_arg(node, i, n), gm) for i, n in enumerate(("query", "key", "value")))
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _einsum(node: fx.Node, gm: fx.GraphModule, out: Shape) -> int:
    """numel(output) x the product of the summed-away dimensions (handles `...` and implicit output)."""
    equation, *operands = node.args
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    if len(operands) < 2:
        return 0
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    sizes: dict[str, int] = {}
    for spec, operand in zip(lhs.split(","), operands, strict=False):
        shape = _shape(operand, gm) or ()
        head, dots, tail = spec.partition("...")
        if dots:
            letters, dims = head + tail, shape[: len(head)] + shape[len(shape) - len(tail) :]
        else:
            letters, dims = spec, shape
        sizes.update(zip(letters, dims, strict=False))
    letters = lhs.replace(",", "").replace("...", "")
    kept = set(rhs.replace("...", "")) if arrow else {c for c in letters if letters.count(c) == 1}
    return _numel(out) * math.prod(size for letter, size in sizes.items() if letter not in kept)


_FUNCTION_RULES: dict[str, Callable[[fx.Node, fx.GraphModule, Shape], int]] = {
    "linear": lambda n, gm, out: _numel(out) * _inner_dim(n, gm, 0),
    "matmul": lambda n, gm, out: _numel(out) * _inner_dim(n, gm, 0),
    "mm": lambda n, gm, out: _numel(out) * _inner_dim(n, gm, 0),
    "bmm": lambda n, gm, out: _numel(out) * _inner_dim(n, gm, 0),
    "addmm": lambda n, gm, out: _numel(out) * _inner_dim(n, gm, 1),
    "baddbmm": lambda n, gm, out: _numel(out) * _inner_dim(n, gm, 1),
    "addbmm": lambda n, gm, out: _numel(_shape(n.args[1], gm)[:1]) * _numel(out) * _inner_dim(n, gm, 1),
    "scaled_dot_product_attention": _sdpa,
    "einsum": _einsum,
    **{name: _conv_fn for name in ("conv1d", "conv2d", "conv3d", "convolution")},
    **{f"conv_transpose{d}d": _conv_fn for d in (1, 2, 3)},
}


def is_opaque(node: fx.Node, gm: fx.GraphModule) -> bool:
    """True for nodes the rules cannot see into: user leaf modules, composite torch.nn modules
    without a rule (e.g. TransformerEncoderLayer) and `torch.fx.wrap`-ped functions."""
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        if isinstance(m, _RULED_MODULES):
            return False
        return not type(m).__module__.startswith("torch.nn") or next(m.children(), None) is not None
    if node.op == "call_function":
        if hasattr(node.target, "overloadpacket"):
            return False
        module = getattr(node.target, "__module__", None) or "builtins"
        return module.split(".")[0] not in _ELEMENTARY
    return False


def node_macs(node: fx.Node, gm: fx.GraphModule, kind: str, out: Shape | None) -> int:
    """Multiply-accumulates of one forward pass through `node`.

    Opaque nodes use the count measured while shapes were propagated (`meta['measured_macs']`).
    """
    if "measured_macs" in node.meta:
        return int(node.meta["measured_macs"])
    if node.op == "call_module":
        return _module_macs(node, gm, out)
    rule = _FUNCTION_RULES.get(kind)
    if rule is None or out is None:
        return 0
    return int(rule(node, gm, out))
