"""decomp: model side of decomp. Tracing, the costed model graph, op timing, coarsening, model and data specs.

Pruning lives in `decomp.pruning`."""

from decomp.build import build_graph, graph_from_module, graph_of_spec
from decomp.data import DataSpec, DataSplits, load_data, parse_data_spec
from decomp.errors import (
    DecompError,
    ExportError,
    GraphError,
    InputShapeError,
    InvalidPlanError,
    SpecError,
    TracingError,
    WeightsError,
)
from decomp.graph import ModelGraph, Totals
from decomp.specs import LoadedModel, ModelSpec, load_model, parse_spec
from decomp.timing import annotate_op_times, op_times
from decomp.tracing import trace

__all__ = [
    "DataSpec",
    "DataSplits",
    "DecompError",
    "ExportError",
    "GraphError",
    "InputShapeError",
    "InvalidPlanError",
    "LoadedModel",
    "ModelGraph",
    "ModelSpec",
    "SpecError",
    "Totals",
    "TracingError",
    "WeightsError",
    "annotate_op_times",
    "build_graph",
    "graph_from_module",
    "graph_of_spec",
    "load_data",
    "load_model",
    "op_times",
    "parse_data_spec",
    "parse_spec",
    "trace",
]
