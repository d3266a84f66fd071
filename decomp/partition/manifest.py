"""The manifest of an export folder (`manifest.json`, format `decomp.export/1`) as typed records.

`Manifest.to_json()` is exactly what `export_split` writes and `Manifest.from_json` reads it back
(`read_manifest` checks the format first), so every export folder written so far still loads. The
manifest lists a sha256 per file; loading checks each file against it (`decomp.partition.export`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from decomp.errors import DecompError, ExportError
from decomp.partition.parts import PartsLayout, PartSpec
from decomp.partition.plan import PartitionPlan
from decomp.pruning.plan import PruningPlan

__all__ = ["FORMAT", "MANIFEST", "EdgeEntry", "Manifest", "PartEntry", "TensorInfo", "manifest_layout", "read_manifest"]

FORMAT_NAME = "decomp.export"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class TensorInfo:
    """A named tensor at the example batch: shape, dtype (torch name without `torch.`), and `batch_dim`,
    the dimension that may take any batch size (0), or None where the size is fixed."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    batch_dim: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "batch_dim": self.batch_dim}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorInfo:
        _check_keys(data, cls, "tensor")
        return cls(data["name"], tuple(data["shape"]), data["dtype"], data.get("batch_dim"))


@dataclass(frozen=True)
class PartEntry:
    """One part: its program file (and ONNX file, if written), device hint, tensors read (call order) and
    returned, `batch` (`dynamic`: takes any batch size; `static`: the example's only; `none`: reads no
    batched input), a note on how it was exported, and how far the exported program strayed from the
    in-memory part on the example inputs."""

    name: str
    file: str
    onnx: str | None
    device: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    batch: str
    note: str
    max_abs_diff: float

    def spec(self) -> PartSpec:
        return PartSpec(self.name, [i.name for i in self.inputs], [o.name for o in self.outputs], self.device)

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return out | {"inputs": [i.to_json() for i in self.inputs], "outputs": [o.to_json() for o in self.outputs]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartEntry:
        _check_keys(data, cls, "part")
        tensors = {k: tuple(TensorInfo.from_json(t) for t in data[k]) for k in ("inputs", "outputs")}
        return cls(**{**data, **tensors})


@dataclass(frozen=True)
class EdgeEntry:
    """A tensor sent to a part: made by part `source` (None: a model input), read by part `target` (None:
    the caller, a model output), with its shape, dtype and bytes at the example batch. JSON keys `from`
    and `to`."""

    source: str | None
    target: str | None
    tensor: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.target,
            "tensor": self.tensor,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "bytes": self.bytes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EdgeEntry:
        valid = ("from", "to", "tensor", "shape", "dtype", "bytes")
        _check_names(data, valid, "edge")
        return cls(data["from"], data["to"], data["tensor"], tuple(data["shape"]), data["dtype"], data["bytes"])


@dataclass(frozen=True)
class Manifest:
    """What an export folder holds: `format`; the `torch` version that wrote it; the `source` model spec
    and its `tracer`; the pruning plan applied before the split (or None) and the partition plan; `batch`
    (`dynamic` where every part takes any batch size, else `static`); the model's `inputs` and `outputs`;
    the `parts` in an order that runs; the `edges` (tensors sent to parts); `expected_costs`, what the
    exporter recorded it expected (JSON, e.g. `{"metrics": ..., "stage_seconds": ...}`, or None); notes on
    `onnx` and `weights`; and `files`, the sha256 of every file beside the manifest."""

    format: str
    torch: str
    source: str
    tracer: str
    pruning_plan: PruningPlan | None
    partition_plan: PartitionPlan
    batch: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    parts: tuple[PartEntry, ...]
    edges: tuple[EdgeEntry, ...]
    expected_costs: Any
    onnx: str
    weights: str
    files: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        records = {k: [x.to_json() for x in out[k]] for k in ("inputs", "outputs", "parts", "edges")}
        plans = {
            "pruning_plan": self.pruning_plan.to_json() if self.pruning_plan is not None else None,
            "partition_plan": self.partition_plan.to_json(),
        }
        return out | plans | records | {"files": dict(self.files)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        _check_keys(data, cls, "manifest")
        pruning = data["pruning_plan"]
        return cls(
            **{
                **data,
                "pruning_plan": PruningPlan.from_json(pruning) if pruning is not None else None,
                "partition_plan": PartitionPlan.from_json(data["partition_plan"]),
                "inputs": tuple(TensorInfo.from_json(t) for t in data["inputs"]),
                "outputs": tuple(TensorInfo.from_json(t) for t in data["outputs"]),
                "parts": tuple(PartEntry.from_json(p) for p in data["parts"]),
                "edges": tuple(EdgeEntry.from_json(e) for e in data["edges"]),
                "files": dict(data["files"]),
            }
        )


def _check_keys(data: Any, record: type, what: str) -> None:
    _check_names(data, [f.name for f in fields(record)], what)


def _check_names(data: Any, valid: Any, what: str) -> None:
    if not isinstance(data, Mapping):
        raise ExportError(f"a {what} entry must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ExportError(f"unknown key(s) {', '.join(unknown)} in a {what} entry; valid keys: {', '.join(valid)}")


def read_manifest(folder: str | Path) -> Manifest:
    """The folder's manifest, after checking that this decomp reads its format."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{Path(folder)} has no {MANIFEST}; give a folder written by decomp's export_split")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path} is not readable JSON ({err}); re-export the model") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    name, _, version = str(fmt).partition("/")
    if name != FORMAT_NAME or not version.isdigit():
        raise ExportError(f"{path} has format {fmt!r}, not {FORMAT}; give a folder written by export_split")
    if int(version) > FORMAT_VERSION:
        raise ExportError(f"{path} is format {fmt}, newer than this decomp reads ({FORMAT}); upgrade decomp to load it")
    missing = [key for key in ("inputs", "outputs", "parts", "files") if not isinstance(data.get(key), (list, dict))]
    if missing:
        raise ExportError(f"{path} lacks {', '.join(missing)}; it is damaged, re-export the model")
    try:
        return Manifest.from_json(data)
    except (DecompError, KeyError, TypeError, ValueError) as err:
        what = f"key {err}" if isinstance(err, KeyError) else str(err)
        raise ExportError(f"{path} is damaged ({what}); re-export the model") from None


def manifest_layout(manifest: Manifest) -> PartsLayout:
    """The parts layout an export manifest records (names of inputs, outputs and every part's tensors)."""
    inputs, outputs = [i.name for i in manifest.inputs], [o.name for o in manifest.outputs]
    return PartsLayout(inputs, outputs, [p.spec() for p in manifest.parts])
