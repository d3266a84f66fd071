"""Cluster specs: which devices there are (kind, count, memory, peak compute and memory bandwidth) and
the links between them (bandwidth, latency), from presets, config files or Python.

A spec in YAML or JSON (quantities as numbers in base units, or strings with units):

    name: two-gpu-nodes
    kinds:
      a100: {type: gpu, peak_flops: 19.5 TFLOP/s, mem_bandwidth: 1.55 TB/s, memory: 40 GiB}
    nodes:
      - {name: n0, devices: {a100: 1}}
      - {name: n1, devices: {a100: 1}}
    intra_node: {bandwidth: 25 GB/s, latency: 10 us}
    inter_node: {bandwidth: 25 Gb/s, latency: 50 us}

The peak figures feed the roofline estimate for ops no profiled table covers; they are rough
datasheet numbers, so calibrate a spec against measurements before trusting absolute times.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from decomp.errors import SpecError

__all__ = [
    "PRESETS",
    "ClusterSpec",
    "Device",
    "DeviceKind",
    "Link",
    "NodeSpec",
    "load_cluster",
    "parse_any_quantity",
    "parse_quantity",
]

DEVICE_TYPES = ("cpu", "gpu")

_UNITS = {  # unit -> (dimension, factor to base units: bytes, bytes/s, FLOP/s, seconds)
    "B": ("bytes", 1),
    "KB": ("bytes", 1e3),
    "MB": ("bytes", 1e6),
    "GB": ("bytes", 1e9),
    "TB": ("bytes", 1e12),
    "KiB": ("bytes", 2**10),
    "MiB": ("bytes", 2**20),
    "GiB": ("bytes", 2**30),
    "TiB": ("bytes", 2**40),
    "B/s": ("bytes/s", 1),
    "KB/s": ("bytes/s", 1e3),
    "MB/s": ("bytes/s", 1e6),
    "GB/s": ("bytes/s", 1e9),
    "TB/s": ("bytes/s", 1e12),
    "Mb/s": ("bytes/s", 1e6 / 8),
    "Gb/s": ("bytes/s", 1e9 / 8),
    "Gbit/s": ("bytes/s", 1e9 / 8),
    "Mbit/s": ("bytes/s", 1e6 / 8),
    "FLOP/s": ("flop/s", 1),
    "GFLOP/s": ("flop/s", 1e9),
    "TFLOP/s": ("flop/s", 1e12),
    "s": ("seconds", 1),
    "ms": ("seconds", 1e-3),
    "us": ("seconds", 1e-6),
    "ns": ("seconds", 1e-9),
}
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]+)?\s*$")


def parse_quantity(value: Any, dimension: str, where: str) -> float:
    """A number in base units, or a string such as '25 Gb/s', '80 GiB', '5 us', '19.5 TFLOP/s'."""
    if isinstance(value, bool):
        raise SpecError(f"{where}: expected a quantity in {dimension}, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), None
    else:
        match = _QUANTITY.match(str(value))
        if not match:
            raise SpecError(f"{where}: cannot read {value!r} as a quantity in {dimension} (e.g. '25 Gb/s', '80 GiB')")
        number, unit = float(match.group(1)), match.group(2)
    if unit is not None:
        dim, factor = _UNITS.get(unit, (None, None))
        if dim != dimension:
            valid = ", ".join(u for u, (d, _) in _UNITS.items() if d == dimension)
            raise SpecError(f"{where}: unit {unit!r} is not a unit of {dimension}; use one of {valid}")
        number *= factor
    if not number > 0:
        raise SpecError(f"{where}: must be > 0, got {value!r}")
    return number


def parse_any_quantity(value: Any, where: str) -> float:
    """A number, or a string with a unit of any dimension ('2 GiB', '5 ms', '25 Gb/s', '1e9'), in base units
    (bytes, bytes/s, FLOP/s, seconds); for bounds on quantities of several kinds, so any sign is kept."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    match = _QUANTITY.match(value) if isinstance(value, str) else None
    if match and match.group(2) in _UNITS:
        return float(match.group(1)) * _UNITS[match.group(2)][1]
    try:
        return float(value)
    except (TypeError, ValueError):
        units = ", ".join(_UNITS)
        raise SpecError(
            f"{where}: cannot read {value!r} as a number or a quantity such as '2 GiB' or '5 ms' (units: {units})"
        ) from None


def _check_keys(data: Any, valid: tuple[str, ...], required: tuple[str, ...], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: expected a mapping with keys {', '.join(valid)}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(valid)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise SpecError(f"{where}: missing key(s) {', '.join(missing)}")
    return data


@dataclass(frozen=True)
class DeviceKind:
    """A kind of device: `type` cpu or gpu; float32 peak FLOP/s and memory bandwidth (bytes/s) for the
    roofline estimate; memory in bytes; `threads`: torch threads a CPU worker of this kind uses."""

    name: str
    type: str
    peak_flops: float
    mem_bandwidth: float
    memory: float
    threads: int = 1

    KEYS = ("type", "peak_flops", "mem_bandwidth", "memory", "threads")

    def __post_init__(self) -> None:
        if self.type not in DEVICE_TYPES:
            raise SpecError(
                f"device kind {self.name!r}: type must be one of {', '.join(DEVICE_TYPES)}, got {self.type!r}"
            )
        if not (self.peak_flops > 0 and self.mem_bandwidth > 0 and self.memory > 0 and self.threads >= 1):
            raise SpecError(f"device kind {self.name!r}: peak_flops, mem_bandwidth, memory and threads must be > 0")

    @classmethod
    def from_dict(cls, name: str, data: Any) -> DeviceKind:
        where = f"kinds.{name}"
        d = _check_keys(data, cls.KEYS, ("type", "peak_flops", "mem_bandwidth", "memory"), where)
        return cls(
            name,
            str(d["type"]),
            parse_quantity(d["peak_flops"], "flop/s", f"{where}.peak_flops"),
            parse_quantity(d["mem_bandwidth"], "bytes/s", f"{where}.mem_bandwidth"),
            parse_quantity(d["memory"], "bytes", f"{where}.memory"),
            int(d.get("threads", 1)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.KEYS}


@dataclass(frozen=True)
class Link:
    """A link: seconds to send `n` bytes are `latency + n / bandwidth` (nothing sent costs nothing)."""

    bandwidth: float
    latency: float = 0.0

    KEYS = ("bandwidth", "latency")

    def time(self, nbytes: float) -> float:
        return self.latency + nbytes / self.bandwidth if nbytes > 0 else 0.0

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Link:
        d = _check_keys(data, cls.KEYS, ("bandwidth",), where)
        latency = d.get("latency", 0)
        return cls(
            parse_quantity(d["bandwidth"], "bytes/s", f"{where}.bandwidth"),
            0.0 if latency in (0, "0") else parse_quantity(latency, "seconds", f"{where}.latency"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"bandwidth": self.bandwidth, "latency": self.latency}


LOCAL = Link(float("inf"), 0.0)  # a tensor that stays on its device


@dataclass(frozen=True)
class NodeSpec:
    """One machine: how many devices of each kind it holds."""

    name: str
    devices: tuple[tuple[str, int], ...]

    KEYS = ("name", "devices")


@dataclass(frozen=True)
class Device:
    """One device of the cluster: `id` such as 'n0/a100:1'."""

    id: str
    node: str
    kind: DeviceKind


@dataclass(frozen=True)
class ClusterSpec:
    """Devices on nodes and the links between them (one link type within a node, one between nodes)."""

    name: str
    kinds: tuple[DeviceKind, ...]
    nodes: tuple[NodeSpec, ...]
    intra_node: Link
    inter_node: Link
    devices: tuple[Device, ...] = field(init=False, repr=False, compare=False)

    KEYS = ("name", "kinds", "nodes", "intra_node", "inter_node")

    def __post_init__(self) -> None:
        kinds = {k.name: k for k in self.kinds}
        if len(kinds) != len(self.kinds):
            raise SpecError(f"cluster {self.name!r}: device kind names repeat")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise SpecError(f"cluster {self.name!r}: node names repeat ({', '.join(names)})")
        devices = []
        for node in self.nodes:
            for kind, count in node.devices:
                if kind not in kinds:
                    raise SpecError(
                        f"cluster {self.name!r}: node {node.name!r} names device kind {kind!r}; "
                        f"defined kinds: {', '.join(kinds) or 'none'}"
                    )
                if count < 1:
                    raise SpecError(f"cluster {self.name!r}: node {node.name!r} has {count} {kind} devices")
                devices += [Device(f"{node.name}/{kind}:{i}", node.name, kinds[kind]) for i in range(count)]
        if not devices:
            raise SpecError(f"cluster {self.name!r} has no devices; give each node some, e.g. devices: {{gpu: 1}}")
        object.__setattr__(self, "devices", tuple(devices))

    def device(self, index_or_id: int | str) -> Device:
        if isinstance(index_or_id, int):
            if not 0 <= index_or_id < len(self.devices):
                raise SpecError(f"cluster {self.name!r} has devices 0..{len(self.devices) - 1}, not {index_or_id}")
            return self.devices[index_or_id]
        for d in self.devices:
            if d.id == index_or_id:
                return d
        raise SpecError(f"cluster {self.name!r} has no device {index_or_id!r}; devices: {self.device_ids()}")

    def device_ids(self) -> str:
        return ", ".join(d.id for d in self.devices)

    def link(self, a: int | str, b: int | str) -> Link:
        """The link tensors take from device `a` to device `b`."""
        da, db = self.device(a), self.device(b)
        if da.id == db.id:
            return LOCAL
        return self.intra_node if da.node == db.node else self.inter_node

    # -- JSON / YAML ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kinds": {k.name: k.to_dict() for k in self.kinds},
            "nodes": [{"name": n.name, "devices": dict(n.devices)} for n in self.nodes],
            "intra_node": self.intra_node.to_dict(),
            "inter_node": self.inter_node.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> ClusterSpec:
        d = _check_keys(data, cls.KEYS, ("kinds", "nodes"), "cluster")
        kinds_data = d["kinds"]
        if not isinstance(kinds_data, Mapping) or not kinds_data:
            raise SpecError("cluster.kinds: expected a mapping of kind name -> {type, peak_flops, ...}")
        kinds = tuple(DeviceKind.from_dict(str(name), k) for name, k in kinds_data.items())
        if not isinstance(d["nodes"], list) or not d["nodes"]:
            raise SpecError("cluster.nodes: expected a list of {name, devices: {kind: count}}")
        nodes = []
        for i, n in enumerate(d["nodes"]):
            nd = _check_keys(n, NodeSpec.KEYS, ("devices",), f"cluster.nodes[{i}]")
            if not isinstance(nd["devices"], Mapping):
                raise SpecError(f"cluster.nodes[{i}].devices: expected a mapping of kind -> count")
            nodes.append(
                NodeSpec(str(nd.get("name", f"n{i}")), tuple((str(k), int(c)) for k, c in nd["devices"].items()))
            )
        default = {"bandwidth": float("inf")}
        return cls(
            str(d.get("name", "cluster")),
            kinds,
            tuple(nodes),
            Link.from_dict(d.get("intra_node", default), "cluster.intra_node"),
            Link.from_dict(d.get("inter_node", d.get("intra_node", default)), "cluster.inter_node"),
        )


def _preset(name: str, kind: dict[str, Any], per_node: int, nodes: int, intra: dict, inter: dict) -> dict[str, Any]:
    kind_name = kind.pop("name")
    return {
        "name": name,
        "kinds": {kind_name: kind},
        "nodes": [{"name": f"n{i}", "devices": {kind_name: per_node}} for i in range(nodes)],
        "intra_node": intra,
        "inter_node": inter,
    }


_H100 = {"name": "h100", "type": "gpu", "peak_flops": "67 TFLOP/s", "mem_bandwidth": "3.35 TB/s", "memory": "80 GiB"}
_A100 = {"name": "a100", "type": "gpu", "peak_flops": "19.5 TFLOP/s", "mem_bandwidth": "1.55 TB/s", "memory": "40 GiB"}
_ORIN = {"name": "orin", "type": "gpu", "peak_flops": "5.3 TFLOP/s", "mem_bandwidth": "204 GB/s", "memory": "32 GiB"}
_PHONE = {"name": "phone-cpu", "type": "cpu", "peak_flops": "40 GFLOP/s", "mem_bandwidth": "30 GB/s", "memory": "8 GiB"}
_CORE = {"name": "cpu-core", "type": "cpu", "peak_flops": "80 GFLOP/s", "mem_bandwidth": "10 GB/s", "memory": "8 GiB"}
_NVLINK = {"bandwidth": "450 GB/s", "latency": "5 us"}
_PCIE = {"bandwidth": "25 GB/s", "latency": "10 us"}
_SHM = {"bandwidth": "2 GB/s", "latency": "1 ms"}  # Ray's object store between worker processes on one host

# Rough datasheet figures: a starting point that `decomp profile` and calibration replace with measurements.
PRESETS: dict[str, dict[str, Any]] = {
    "h100x4-nvlink": _preset("h100x4-nvlink", dict(_H100), 4, 1, _NVLINK, _NVLINK),
    "h100x8-nvlink": _preset("h100x8-nvlink", dict(_H100), 8, 1, _NVLINK, _NVLINK),
    "a100x4-pcie": _preset("a100x4-pcie", dict(_A100), 4, 1, _PCIE, _PCIE),
    "a100-nodes-25gbe": _preset(
        "a100-nodes-25gbe", dict(_A100), 1, 4, _PCIE, {"bandwidth": "25 Gb/s", "latency": "50 us"}
    ),
    "a100-nodes-100gbe": _preset(
        "a100-nodes-100gbe", dict(_A100), 1, 4, _PCIE, {"bandwidth": "100 Gb/s", "latency": "20 us"}
    ),
    "cpu-host-x2": _preset("cpu-host-x2", dict(_CORE), 2, 1, _SHM, _SHM),
    "cpu-host-x4": _preset("cpu-host-x4", dict(_CORE), 4, 1, _SHM, _SHM),
    "orin-x2-1gbe": _preset("orin-x2-1gbe", dict(_ORIN), 1, 2, _PCIE, {"bandwidth": "1 Gb/s", "latency": "200 us"}),
    "phone-x2-wifi": _preset("phone-x2-wifi", dict(_PHONE), 1, 2, _SHM, {"bandwidth": "600 Mb/s", "latency": "2 ms"}),
}


def load_cluster(source: str | Path | Mapping[str, Any]) -> ClusterSpec:
    """A cluster spec from a preset name, a YAML/JSON file, or a mapping."""
    if isinstance(source, Mapping):
        return ClusterSpec.from_dict(source)
    text = str(source)
    if text in PRESETS:
        return ClusterSpec.from_dict(PRESETS[text])
    path = Path(text)
    if not path.is_file():
        raise SpecError(f"cluster {text!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise SpecError(f"cannot read cluster spec {path}: {err}") from None
    return ClusterSpec.from_dict(data)
