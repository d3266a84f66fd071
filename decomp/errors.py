"""The error hierarchy: every user-facing failure is a `DecompError` that says what went wrong and how to fix it."""

from __future__ import annotations

__all__ = [
    "DecompError",
    "SpecError",
    "WeightsError",
    "TracingError",
    "InputShapeError",
    "GraphError",
    "InvalidPlanError",
    "ExportError",
    "SearchError",
]


class DecompError(Exception):
    """Base class of every error decomp raises on purpose."""


class SpecError(DecompError, ValueError):
    """A model spec that cannot be parsed or resolved."""


class WeightsError(DecompError):
    """A weights file that cannot be read or does not fit the model."""


class TracingError(DecompError):
    """A model the tracer cannot capture as a graph."""


class InputShapeError(DecompError, ValueError):
    """Example inputs whose shape does not fit the model; names the layer that rejected them."""


class GraphError(DecompError, ValueError):
    """A graph operation asked for something the graph does not have (bad depth, block count, JSON)."""


class InvalidPlanError(DecompError, ValueError):
    """A pruning or partition plan that does not fit the graph or breaks a rule."""


class ExportError(DecompError):
    """An export folder that cannot be written or read: missing or changed files, a newer format,
    contents that would need unpickling."""


class SearchError(DecompError, ValueError):
    """A search set up wrongly: an unknown searcher or objective, a space with nothing to search, a genome
    that does not fit its space, a searcher state from another searcher."""
