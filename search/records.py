"""The records searchers exchange: genes, objectives, constraints, candidates and evaluations.

Frozen dataclasses with a JSON round trip (`to_json` / `from_json`), so a driver can store them and a
resumed run can read them back. Objective values are kept in their natural units and direction; the
searchers turn them into "smaller is better" with `Objective.sign`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from decomp.errors import SearchError
from decomp.partition.plan import PartitionPlan
from decomp.pruning.plan import PruningPlan

__all__ = ["DIRECTIONS", "STATES", "Candidate", "Constraint", "Evaluation", "Gene", "Objective", "json_float"]

DIRECTIONS = ("minimize", "maximize")
STATES = ("complete", "failed")


@dataclass(frozen=True)
class Gene:
    """One coordinate of a genome: a float in [low, high], or an integer in {low, ..., high}."""

    name: str
    low: float
    high: float
    integer: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise SearchError(f"gene {self.name!r}: need finite low <= high, got [{self.low}, {self.high}]")
        if self.integer and (self.low != int(self.low) or self.high != int(self.high)):
            raise SearchError(f"integer gene {self.name!r}: bounds must be integers, got [{self.low}, {self.high}]")

    @property
    def fixed(self) -> bool:
        """True when the gene has one value only (nothing to search)."""
        return self.low == self.high

    def clip(self, value: float) -> float | int:
        """`value` brought inside the bounds (rounded to the nearest integer for integer genes)."""
        if not math.isfinite(value):
            raise SearchError(f"gene {self.name!r}: value {value} is not finite")
        value = min(self.high, max(self.low, float(value)))
        return int(math.floor(value + 0.5)) if self.integer else value

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "low": self.low, "high": self.high, "integer": self.integer}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Gene:
        return cls(**data)


@dataclass(frozen=True)
class Objective:
    """A quantity to optimise. `name` is what the evaluator reports (e.g. `macs`, `latency_s`)."""

    name: str
    direction: str = "minimize"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise SearchError(
                f"objective {self.name!r}: unknown direction {self.direction!r}; use one of {', '.join(DIRECTIONS)}"
            )

    @property
    def sign(self) -> float:
        """+1 for minimise, -1 for maximise: `sign * value` is smaller-is-better."""
        return 1.0 if self.direction == "minimize" else -1.0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Objective:
        return cls(**data)


@dataclass(frozen=True)
class Constraint:
    """A bound a candidate must satisfy: `value <= bound` (`sense` '<=') or `value >= bound` ('>=')."""

    name: str
    bound: float
    sense: str = "<="

    def __post_init__(self) -> None:
        if self.sense not in ("<=", ">="):
            raise SearchError(f"constraint {self.name!r}: sense must be '<=' or '>=', got {self.sense!r}")

    def violation(self, value: float) -> float:
        """How far `value` is outside the bound (0 when satisfied; Optuna's convention: <= 0 is feasible)."""
        excess = value - self.bound if self.sense == "<=" else self.bound - value
        return max(0.0, float(excess)) if math.isfinite(excess) else math.inf

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "bound": self.bound, "sense": self.sense}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Constraint:
        return cls(**data)


@dataclass(frozen=True)
class Candidate:
    """A point a searcher wants evaluated: its genome (one value per gene of the space) and the plans
    the genome decodes to (None for spaces without pruning or partitioning, such as test problems)."""

    id: int
    searcher: str
    genome: tuple[float | int, ...]
    pruning: PruningPlan | None = None
    partition: PartitionPlan | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "searcher": self.searcher,
            "genome": list(self.genome),
            "pruning": None if self.pruning is None else self.pruning.to_json(),
            "partition": None if self.partition is None else self.partition.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(
            id=int(data["id"]),
            searcher=data["searcher"],
            genome=tuple(data["genome"]),
            pruning=None if data.get("pruning") is None else PruningPlan.from_json(data["pruning"]),
            partition=None if data.get("partition") is None else PartitionPlan.from_json(data["partition"]),
        )


@dataclass(frozen=True)
class Evaluation:
    """What evaluating a candidate gave. `values` follow the study's objectives in order, `constraints`
    its constraints (raw values, not violations); `metrics` are extra figures worth keeping.

    An evaluation whose objective or constraint values are NaN or infinite is failed: build it with
    `Evaluation.of(...)`, which marks it so and names the bad value."""

    candidate_id: int
    values: tuple[float, ...] = ()
    constraints: tuple[float, ...] = ()
    metrics: Mapping[str, float] = field(default_factory=dict)
    state: str = "complete"
    message: str = ""
    wall_time: float = 0.0

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise SearchError(f"evaluation state must be one of {', '.join(STATES)}, got {self.state!r}")
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        object.__setattr__(self, "constraints", tuple(float(v) for v in self.constraints))
        object.__setattr__(self, "metrics", dict(self.metrics))

    @property
    def ok(self) -> bool:
        """Complete with finite values: usable by a searcher."""
        return self.state == "complete"

    @classmethod
    def of(
        cls,
        candidate_id: int,
        values: Sequence[float],
        constraints: Sequence[float] = (),
        metrics: Mapping[str, float] | None = None,
        wall_time: float = 0.0,
        names: Sequence[str] = (),
    ) -> Evaluation:
        """A complete evaluation, or a failed one naming the first NaN/inf value (`names` label them)."""
        values, constraints = tuple(float(v) for v in values), tuple(float(v) for v in constraints)
        for i, v in enumerate(values + constraints):
            if not math.isfinite(v):
                label = names[i] if i < len(names) else f"value {i}"
                return cls(
                    candidate_id,
                    values,
                    constraints,
                    metrics or {},
                    state="failed",
                    message=f"{label} is {v} (not finite); the trial is recorded as failed",
                    wall_time=wall_time,
                )
        return cls(candidate_id, values, constraints, metrics or {}, wall_time=wall_time)

    @classmethod
    def failed(cls, candidate_id: int, message: str, wall_time: float = 0.0) -> Evaluation:
        return cls(candidate_id, state="failed", message=message, wall_time=wall_time)

    def check_shape(self, objectives: Sequence[Objective], constraints: Sequence[Constraint]) -> None:
        """An error unless a complete evaluation has one value per objective and one per constraint."""
        if not self.ok:
            return
        if len(self.values) != len(objectives):
            raise SearchError(
                f"evaluation of candidate {self.candidate_id} has {len(self.values)} values for "
                f"{len(objectives)} objectives ({', '.join(o.name for o in objectives)})"
            )
        if len(self.constraints) != len(constraints):
            raise SearchError(
                f"evaluation of candidate {self.candidate_id} has {len(self.constraints)} constraint values for "
                f"{len(constraints)} constraints"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "candidate_id": self.candidate_id,
            "values": [json_float(v) for v in self.values],
            "constraints": [json_float(v) for v in self.constraints],
            "metrics": {k: json_float(v) for k, v in self.metrics.items()},
            "state": self.state,
            "message": self.message,
            "wall_time": self.wall_time,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Evaluation:
        return cls(
            candidate_id=int(data["candidate_id"]),
            values=tuple(float(v) for v in data.get("values", ())),
            constraints=tuple(float(v) for v in data.get("constraints", ())),
            metrics={k: float(v) for k, v in data.get("metrics", {}).items()},
            state=data.get("state", "complete"),
            message=data.get("message", ""),
            wall_time=float(data.get("wall_time", 0.0)),
        )


def json_float(value: float) -> float | str:
    """`value` as a float for strict JSON, which has no NaN or infinity: those become the strings 'nan',
    'inf' and '-inf', which float() reads back."""
    value = float(value)
    return value if math.isfinite(value) else str(value)
