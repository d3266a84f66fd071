"""`PruningPlan`: what to remove, as a frozen record with a JSON round trip.

Structured: per coupling group a keep ratio (channels chosen by an importance criterion when the
plan is applied) or explicit kept channel indices. Unstructured: per layer a sparsity (fraction of
weights removed by magnitude) or an N:M pattern (keep N of every M consecutive input weights).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from decomp.errors import InvalidPlanError

__all__ = ["GroupChoice", "LayerSparsity", "PruningPlan", "CRITERIA", "parse_pattern"]

CRITERIA = ("l1", "l2", "fpgm", "bn_scale", "taylor")


@dataclass(frozen=True)
class GroupChoice:
    """Keep `keep_ratio` of a group's channels, or exactly the channels in `keep`."""

    group: str
    keep_ratio: float | None = None
    keep: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.keep_ratio is None) == (self.keep is None):
            raise InvalidPlanError(f"group {self.group}: give exactly one of keep_ratio or keep")
        if self.keep_ratio is not None and not 0.0 < self.keep_ratio <= 1.0:
            raise InvalidPlanError(
                f"keep ratio must be in (0, 1], got {self.keep_ratio} for group {self.group} "
                "(a pruning ratio r is a keep ratio of 1 - r)"
            )
        if self.keep is not None:
            object.__setattr__(self, "keep", tuple(sorted(int(i) for i in self.keep)))

    def kept_count(self, channels: int, round_to: int = 1) -> int:
        """How many channels stay: the ratio rounded to a multiple of `round_to`, at least `round_to`."""
        if self.keep is not None:
            return len(self.keep)
        count = self.keep_ratio * channels
        return min(channels, max(round_to, round_to * math.floor(count / round_to + 0.5)))


def parse_pattern(pattern: str) -> tuple[int, int]:
    """'2:4' -> (2, 4)."""
    try:
        n, m = (int(p) for p in pattern.split(":"))
    except ValueError:
        raise InvalidPlanError(f"N:M pattern must look like 2:4, got {pattern!r}") from None
    if not 0 < n < m:
        raise InvalidPlanError(f"N:M pattern needs 0 < N < M, got {pattern!r}")
    return n, m


@dataclass(frozen=True)
class LayerSparsity:
    """Remove `sparsity` of a layer's weights by magnitude, or keep N of every M (`pattern` 'N:M')."""

    layer: str
    sparsity: float | None = None
    pattern: str | None = None

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.pattern is None):
            raise InvalidPlanError(f"layer {self.layer}: give exactly one of sparsity or pattern")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise InvalidPlanError(f"pruning ratio must be in [0, 1), got {self.sparsity} for layer {self.layer}")
        if self.pattern is not None:
            parse_pattern(self.pattern)


@dataclass(frozen=True)
class PruningPlan:
    """A whole pruning decision. `criterion` ranks channels for groups given by ratio."""

    groups: tuple[GroupChoice, ...] = ()
    layers: tuple[LayerSparsity, ...] = ()
    criterion: str = "l1"
    round_to: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.criterion not in CRITERIA:
            raise InvalidPlanError(f"unknown criterion {self.criterion!r}; choose one of {', '.join(CRITERIA)}")
        if self.round_to < 1:
            raise InvalidPlanError(f"round_to must be >= 1, got {self.round_to}")
        for kind, items, key in (("group", self.groups, "group"), ("layer", self.layers, "layer")):
            names = [getattr(item, key) for item in items]
            duplicated = sorted({n for n in names if names.count(n) > 1})
            if duplicated:
                raise InvalidPlanError(f"{kind} named more than once in the plan: {', '.join(duplicated)}")

    def prunes(self) -> bool:
        """Whether applying the plan may remove anything: a group kept below ratio 1 or by a list of channels,
        a layer with a sparsity above 0 or an N:M pattern. False: the plan leaves the model as it is."""
        groups = any(g.keep is not None or g.keep_ratio < 1.0 for g in self.groups)
        return groups or any(layer.pattern is not None or layer.sparsity > 0 for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {"format": "decomp.pruning_plan/1", **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PruningPlan:
        data = dict(data)
        fmt = data.pop("format", None)
        if fmt != "decomp.pruning_plan/1":
            raise InvalidPlanError(f"not a pruning plan of format decomp.pruning_plan/1 (format is {fmt!r})")
        _check_keys("pruning plan", data, cls)
        for item in data.get("groups", []):
            _check_keys("group choice", item, GroupChoice)
        for item in data.get("layers", []):
            _check_keys("layer sparsity", item, LayerSparsity)
        groups = tuple(
            GroupChoice(**{**g, "keep": tuple(g["keep"]) if g.get("keep") is not None else None})
            for g in data.pop("groups", [])
        )
        layers = tuple(LayerSparsity(**layer) for layer in data.pop("layers", []))
        return cls(groups=groups, layers=layers, **data)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    @classmethod
    def loads(cls, text: str) -> PruningPlan:
        return cls.from_json(json.loads(text))


def _check_keys(what: str, data: dict[str, Any], record: type) -> None:
    valid = [f.name for f in fields(record)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise InvalidPlanError(f"unknown key(s) {', '.join(unknown)} in {what}; valid keys: {', '.join(valid)}")
