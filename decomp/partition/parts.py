"""`PartsLayout`: how the parts of a split model connect, and the in-process runner that composes them.

Tensors that cross between parts, the model's inputs and its outputs all have names. Each part reads
named tensors (in its call order) and returns named tensors; the layout lists the parts in an order
that runs. The same layout describes an in-memory split (`decomp.partition.split`), an export folder's
manifest and what the Ray runtime places on actors, so every runner executes the same record.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from decomp.errors import InvalidPlanError

__all__ = ["PartSpec", "PartsLayout", "run_local"]


@dataclass(frozen=True)
class PartSpec:
    """One part: the named tensors it reads (call order) and returns (return order), and a device hint."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    device: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))


@dataclass(frozen=True)
class PartsLayout:
    """Model input names (call order), model output names (flattened outputs, in order) and the parts
    in an order that runs."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    parts: tuple[PartSpec, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "parts", tuple(self.parts))
        known = set(self.inputs)
        for part in self.parts:
            missing = [n for n in part.inputs if n not in known]
            if missing:
                raise InvalidPlanError(
                    f"part {part.name} reads {', '.join(missing)}, which no earlier part or model input makes; "
                    "list the parts in an order that runs"
                )
            twice = [n for n in part.outputs if n in known]
            if twice:
                raise InvalidPlanError(f"part {part.name} makes {', '.join(twice)}, which already exist")
            known.update(part.outputs)
        missing = [n for n in self.outputs if n not in known]
        if missing:
            raise InvalidPlanError(f"model output(s) {', '.join(missing)} are made by no part")

    def producer(self) -> dict[str, int | None]:
        """Tensor name -> index of the part that makes it (None for model inputs)."""
        made: dict[str, int | None] = dict.fromkeys(self.inputs)
        for k, part in enumerate(self.parts):
            made.update(dict.fromkeys(part.outputs, k))
        return made

    def edges(self) -> list[tuple[int | None, int | None, str]]:
        """(producer part, consumer part, tensor): None stands for the caller (model inputs and outputs)."""
        made = self.producer()
        out = [(made[n], k, n) for k, part in enumerate(self.parts) for n in part.inputs]
        return out + [(made[n], None, n) for n in self.outputs]

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "parts": [
                {"name": p.name, "inputs": list(p.inputs), "outputs": list(p.outputs), "device": p.device}
                for p in self.parts
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartsLayout:
        return cls(data["inputs"], data["outputs"], tuple(PartSpec(**p) for p in data["parts"]))


def as_tuple(value: Any) -> tuple[Any, ...]:
    """A part's return value as a tuple (a lone tensor becomes a 1-tuple)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def run_local(layout: PartsLayout, modules: Sequence[Callable[..., Any]], *inputs: torch.Tensor) -> tuple[Any, ...]:
    """Run the parts one after another in this process; returns the model outputs in layout order."""
    env = run_parts(layout, modules, *inputs)
    return tuple(env[n] for n in layout.outputs)


def run_parts(layout: PartsLayout, modules: Sequence[Callable[..., Any]], *inputs: torch.Tensor) -> dict[str, Any]:
    """Run the parts one after another in this process; returns every named tensor (model inputs,
    tensors crossing parts, outputs)."""
    if len(inputs) != len(layout.inputs):
        raise InvalidPlanError(
            f"the model takes {len(layout.inputs)} input(s) ({', '.join(layout.inputs)}), got {len(inputs)}"
        )
    if len(modules) != len(layout.parts):
        raise InvalidPlanError(f"{len(modules)} modules for {len(layout.parts)} parts")
    env = dict(zip(layout.inputs, inputs, strict=True))
    for part, module in zip(layout.parts, modules, strict=True):
        results = as_tuple(module(*(env[n] for n in part.inputs)))
        if len(results) != len(part.outputs):
            raise InvalidPlanError(
                f"part {part.name} returned {len(results)} values, its layout says {len(part.outputs)}"
            )
        env.update(zip(part.outputs, results, strict=True))
    return env
