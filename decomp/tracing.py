"""Capture a model as a torch.fx graph with output shapes on every node.

Two tracers: `fx` (torch.fx.symbolic_trace + ShapeProp: module-level nodes, fast, the default) and
`export` (torch.export, ATen-level nodes; handles the control flow of e.g. Hugging Face models).
Failures become `TracingError` / `InputShapeError` naming the module and source line that broke.
"""

from __future__ import annotations

import linecache
import os
import traceback
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from decomp.costs import is_opaque, module_path
from decomp.errors import InputShapeError, TracingError

__all__ = ["TRACERS", "per_channel", "trace"]

TRACERS = ("fx", "export")
_TORCH_DIR = os.path.dirname(torch.__file__)


class _LeafTracer(fx.Tracer):
    """fx tracer that keeps chosen modules whole and remembers which module it was in when it failed."""

    def __init__(self, leaf_modules: Sequence[str | type]) -> None:
        super().__init__()
        self.leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self.leaf_names = {m for m in leaf_modules if isinstance(m, str)}
        self.stack: list[tuple[str, str]] = []
        self.failed_in: list[tuple[str, str]] | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self.leaf_types) or type(m).__name__ in self.leaf_names or qualname in self.leaf_names:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.stack.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = list(self.stack)
            raise
        finally:
            self.stack.pop()


# elementwise ops: channel c of the output reads channel c of the input only (a width split runs them inside
# every slice; a channel gate may close a channel before them)
ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.Dropout,
    nn.Identity,
)
ELEMENTWISE_FUNCTIONS = frozenset(
    {
        torch.relu,
        torch.sigmoid,
        torch.tanh,
        nn.functional.relu,
        nn.functional.relu6,
        nn.functional.gelu,
        nn.functional.silu,
        nn.functional.hardswish,
        nn.functional.dropout,
    }
)
ELEMENTWISE_METHODS = frozenset({"relu", "sigmoid", "tanh"})


def per_channel(
    node: fx.Node, gm: fx.GraphModule, modules: tuple[type, ...] = (), functions: frozenset = frozenset()
) -> bool:
    """Whether `node` of `gm` acts on each channel alone: an elementwise op, or one of the caller's own
    per-channel `modules` (e.g. BatchNorm, pooling) and `functions`."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), (*ELEMENTWISE_MODULES, *modules))
    if node.op == "call_function":
        return node.target in ELEMENTWISE_FUNCTIONS or node.target in functions
    return node.op == "call_method" and node.target in ELEMENTWISE_METHODS


def _user_frame(err: BaseException) -> str:
    """`file:line: code` of the innermost frame outside torch where `err` was raised, or ''."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    if not frames:
        return ""
    f = frames[-1]
    code = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    return f"{f.filename}:{f.lineno}: {code}"


def _module_at_failure(err: BaseException, model: nn.Module) -> str:
    """The path of the innermost module whose forward was on the stack when `err` was raised."""
    names = {id(m): name for name, m in model.named_modules()}
    found = ""
    tb = err.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in names:
            found = f"{names[id(owner)] or '<root>'} ({type(owner).__name__})"
        tb = tb.tb_next
    return found


def trace(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    tracer: str = "fx",
    leaf_modules: Sequence[str | type] = (),
) -> fx.GraphModule:
    """Trace `model` into a GraphModule whose nodes carry output shapes (`meta['tensor_meta']`)."""
    if tracer not in TRACERS:
        raise TracingError(f"unknown tracer {tracer!r}; choose one of {', '.join(TRACERS)}")
    if tracer == "export":
        return _export(model, example_inputs)
    leaf = _LeafTracer(leaf_modules)
    try:
        graph = leaf.trace(model)
    except Exception as err:
        where = " > ".join(f"{p or '<root>'} ({c})" for p, c in (leaf.failed_in or [])) or "<root>"
        raise TracingError(
            f"torch.fx cannot trace {type(model).__name__}: it broke in module {where}"
            f" at {_user_frame(err) or 'an unknown line'}: {type(err).__name__}: {err}\n"
            "What to do: keep the module whole as a leaf (--leaf-module NAME_OR_CLASS), make the "
            "data-dependent branch depend on a constant instead, or trace with torch.export "
            "(--tracer export)."
        ) from err
    gm = fx.GraphModule(leaf.root, graph, type(model).__name__)
    _propagate_shapes(gm, example_inputs)
    return gm


class _NamedShapeProp(ShapeProp):
    """ShapeProp whose failures name the layer and the shapes it was given."""

    def run_node(self, n: fx.Node):
        try:
            if not is_opaque(n, self.module):
                return super().run_node(n)
            # the cost rules cannot see inside: count its MACs with torch's counter (math SDPA so
            # attention is counted on every backend)
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                result = super().run_node(n)
            n.meta["measured_macs"] = counter.get_total_flops() // 2
            return result
        except Exception as err:
            cause = err.__cause__ or err
            layer = n.target if n.op == "call_module" else module_path(n) or "<root>"
            kind = type(self.module.get_submodule(n.target)).__name__ if n.op == "call_module" else str(n.target)
            shapes = [tuple(a.shape) for a in self.fetch_args_kwargs_from_env(n)[0] if isinstance(a, torch.Tensor)]
            raise InputShapeError(
                f"layer {layer} ({kind}) rejected its input of shape {shapes}: {cause}\n"
                "Check --input-shape: give the shape the model expects (e.g. 1,3,224,224 for ImageNet models)."
            ) from cause


def _propagate_shapes(gm: fx.GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> None:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        raise InputShapeError(
            f"the model takes {len(placeholders)} inputs ({', '.join(p.name for p in placeholders)}) "
            f"but {len(example_inputs)} example inputs were given"
        )
    with torch.no_grad():
        _NamedShapeProp(gm).propagate(*example_inputs)


def _export(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    try:
        with torch.no_grad():
            program = torch.export.export(model, tuple(example_inputs), strict=False)
    except Exception as err:
        module = _module_at_failure(err, model) or type(model).__name__
        raise TracingError(
            f"torch.export cannot capture {type(model).__name__}: it broke in module {module}"
            f" at {_user_frame(err) or 'an unknown line'}: {type(err).__name__}: {str(err).splitlines()[0]}\n"
            "What to do: check the input shape (--input-shape), or try the fx tracer (--tracer fx) "
            "with leaf modules, or another spec."
        ) from err
    return program.module()
