"""decomp.latency: the latency and communication model. Cluster specs (devices, links, presets),
per-op latency tables measured on the device the profiler runs on, predictions of a candidate's
latency, pipelined throughput, communication and memory per device (`LatencyModel` for a graph, `CostModel`
for a candidate's plans on one graph, both through `pipeline_times`), and calibration to measurements."""

from decomp.latency.calibration import default_calibration_path, fit_runtime, load_calibration, save_calibration
from decomp.latency.candidate import CandidateCost, CostModel
from decomp.latency.cluster import PRESETS, ClusterSpec, Device, DeviceKind, Link, NodeSpec, load_cluster
from decomp.latency.pipeline import PipelineTimes, pipeline_times
from decomp.latency.predict import Calibration, LatencyModel, Prediction, calibrate
from decomp.latency.table import OpTable, default_table_path, device_key, op_signature, profile_ops

__all__ = [
    "PRESETS",
    "Calibration",
    "CandidateCost",
    "ClusterSpec",
    "CostModel",
    "Device",
    "DeviceKind",
    "LatencyModel",
    "Link",
    "NodeSpec",
    "OpTable",
    "PipelineTimes",
    "Prediction",
    "calibrate",
    "default_calibration_path",
    "fit_runtime",
    "load_calibration",
    "save_calibration",
    "default_table_path",
    "device_key",
    "load_cluster",
    "op_signature",
    "pipeline_times",
    "profile_ops",
]
