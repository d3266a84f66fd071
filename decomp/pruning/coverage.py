"""Which layers structured pruning reaches, and why the others are left whole.

`output_layers` finds the layers whose output channels are the model's outputs: walking back from each
returned tensor through parameter-free ops to the first layer (also when that layer's output feeds
other layers too). `unpruned_layers` lists every layer with parameters that no coupling group covers,
with the reason, so a summary can say what was not pruned instead of saying nothing.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

__all__ = ["flat_tensors", "output_layers", "unpruned_layers"]


def output_layers(dg: tp.DependencyGraph, outputs: list[torch.Tensor], model: nn.Module) -> set[int]:
    """ids of the layers (and unwrapped parameters) whose outputs reach the model's `outputs` through
    parameter-free ops only, from the autograd graph Torch-Pruning traced."""
    own = {id(m) for m in model.modules()} | {id(p) for p in model.parameters()}
    by_grad_fn = {node.grad_fn: node.module for node in dg.module2node.values() if id(node.module) in own}
    found: set[int] = set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen = set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        layer = by_grad_fn.get(fn)
        if layer is not None:
            found.add(id(layer))
            continue
        variable = getattr(fn, "variable", None)  # a leaf: an unwrapped parameter used as it is
        if variable is not None and id(variable) in own:
            found.add(id(variable))
        stack.extend(f for f, _ in getattr(fn, "next_functions", ()))
    return found


RECURRENT = "recurrent layer: decomp does not prune LSTM, GRU or RNN widths"
OUTPUT = "its channels reach a model output (kept whole)"
UNUSED = "not used on the example inputs"
NO_GROUP = "in no coupling group: groups start at a Conv or Linear layer's outputs and none reaches it"


def unpruned_layers(
    model: nn.Module,
    dg: tp.DependencyGraph,
    covered: set[str],
    left_out: dict[str, tuple[str, set[str]]],
    at_output: set[str],
) -> dict[str, str]:
    """Layers with parameters that no group covers -> why. `covered`: module paths and parameter names
    the groups list; `left_out`: group id -> (reason, its layer paths) for groups left out; `at_output`:
    the layers of groups whose channels reach a model output."""
    traced = {id(node.module) for node in dg.module2node.values()}
    reasons: dict[str, str] = {}
    for key, module, params in _units(model):
        if _covered(key, params, covered):
            continue
        reason = next(
            (
                f"its group {gid} was left out (see the skipped groups)"
                for gid, (_, layers) in left_out.items()
                if {key, *params} & layers
            ),
            None,
        )
        if reason is None and isinstance(module, nn.RNNBase):
            reason = RECURRENT
        elif reason is None and {key, *params} & at_output:
            reason = OUTPUT
        elif reason is None and id(module) not in traced and not any(id(p) in traced for p in params.values()):
            reason = UNUSED
        reasons[key] = reason or NO_GROUP
    return reasons


def _units(model: nn.Module):
    """(name, module, {full name: parameter}) per layer with parameters; the top module's own parameters
    (used directly in its forward) count one by one, under their names."""
    for path, module in model.named_modules():
        own = {f"{path}.{name}" if path else name: p for name, p in module.named_parameters(recurse=False)}
        if path and own:
            yield path, module, own
        elif not path:
            yield from ((name, None, {name: p}) for name, p in own.items())


def _covered(key: str, params: dict[str, nn.Parameter], covered: set[str]) -> bool:
    """A layer is covered when a group lists it, one of its parameters, or a module it belongs to."""
    if key in covered or covered & set(params):
        return True
    parts = key.split(".")
    return any(".".join(parts[:k]) in covered for k in range(1, len(parts)))


def flat_tensors(value) -> list[torch.Tensor]:
    """The tensors in a model's output (a tensor, or nested tuples, lists and dicts of them), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flat_tensors(v)]
    return []
