"""decomp.partition: partition plans (which part of the graph runs where), their metrics and baseline
splits, pipeline splits tuned by running them, splitting a model into sub-modules, export and load of
partitioned models, and the in-process runner that composes the parts."""

from decomp.partition.baselines import METHODS, StageCost, graph_partition, optimal_pipeline, pipeline_stage_times
from decomp.partition.export import ExportedPart, LoadedExport, export_split, load_export, load_part, verify_export
from decomp.partition.manifest import FORMAT as EXPORT_FORMAT
from decomp.partition.manifest import EdgeEntry, Manifest, PartEntry, TensorInfo, manifest_layout, read_manifest
from decomp.partition.metrics import PartitionMetrics, PartMetrics, batch_size, partition_metrics
from decomp.partition.parts import PartsLayout, PartSpec, run_local
from decomp.partition.plan import MODES, PartitionPlan, crossings, expand, quotient, repair, tensor_flows
from decomp.partition.split import SplitModel, flat_outputs, split_model
from decomp.partition.tune import PipelineTrial, halfway_split, rescale_op_times, tune_pipeline

__all__ = [
    "EXPORT_FORMAT",
    "EdgeEntry",
    "METHODS",
    "MODES",
    "ExportedPart",
    "LoadedExport",
    "Manifest",
    "PartEntry",
    "PartMetrics",
    "PartSpec",
    "PartitionMetrics",
    "PartitionPlan",
    "PartsLayout",
    "PipelineTrial",
    "SplitModel",
    "StageCost",
    "TensorInfo",
    "batch_size",
    "crossings",
    "expand",
    "export_split",
    "flat_outputs",
    "graph_partition",
    "halfway_split",
    "load_export",
    "load_part",
    "manifest_layout",
    "optimal_pipeline",
    "partition_metrics",
    "pipeline_stage_times",
    "quotient",
    "read_manifest",
    "repair",
    "rescale_op_times",
    "run_local",
    "split_model",
    "tensor_flows",
    "tune_pipeline",
    "verify_export",
]
