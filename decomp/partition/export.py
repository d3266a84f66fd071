"""Export a split model to a folder of `torch.export` programs with a manifest, and load it back
without the model's code and without unpickling anything.

Folder layout (format `decomp.export/1`):

- `manifest.json`: format version, torch version, source model spec, pruning and partition plans,
  model inputs/outputs and parts with their tensor names, shapes and dtypes, edges between parts,
  device hints, whether each part takes any batch size, expected costs, and a sha256 per file.
- `part_K.pt2`: `torch.export.save` of part K (K is the plan's part number), weights included.
- `part_K.onnx`: only with `onnx=True` and the `onnx`/`onnxscript` packages installed.

Pickle: in this torch (2.14) `torch.export.save` stores the graph as JSON and plain weights and
constants as raw bytes, but pickles the example inputs (always), tensor-subclass weights and opaque
script objects, and `torch.export.load` unpickles those (the example inputs with a fallback to
`weights_only=False`; an archive in the pre-2.7 zip layout is unpickled whole). So export drops the
example inputs and refuses parts holding anything but plain tensors, and load inspects every archive
before `torch.export.load` and refuses any entry that would be unpickled. Weights therefore travel as
raw tensor bytes inside each `.pt2`; no separate safetensors file is needed. Loading needs neither
the model's code nor pickle.

The folder is written to a temporary sibling and renamed into place, so a crash never leaves a
half-written export behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.export import Dim

from decomp.errors import ExportError, InputShapeError
from decomp.files import staged_folder
from decomp.partition.manifest import (
    FORMAT,
    MANIFEST,
    EdgeEntry,
    Manifest,
    PartEntry,
    TensorInfo,
    manifest_layout,
    read_manifest,
)
from decomp.partition.parts import PartsLayout, PartSpec, as_tuple, run_local
from decomp.partition.split import SplitModel, flat_outputs, outputs_diff
from decomp.pruning.plan import PruningPlan

__all__ = ["ExportedPart", "LoadedExport", "export_split", "load_export", "load_part", "verify_export"]

_CHECK = {"rtol": 1e-4, "atol": 1e-5}  # an exported part must reproduce the in-memory part this closely
# every record torch.export.save writes for one program with plain-tensor weights and no example inputs
_ARCHIVE_RECORDS = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+|data/sample_inputs/model\.pt"
)


# -- writing -----------------------------------------------------------------------------------------
def export_split(
    split: SplitModel,
    out_dir: str | Path,
    *,
    source: str = "",
    pruning_plan: PruningPlan | None = None,
    onnx: bool = False,
    expected_costs: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write every part of `split` as a `torch.export` program plus `manifest.json` to `out_dir`;
    returns the folder. `expected_costs`: what the caller expects the split to cost, recorded as JSON (a
    dict, or a record with `to_json()`). Refuses an existing non-empty `out_dir` unless `overwrite`."""
    out = Path(out_dir).resolve()
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty; choose another folder or pass overwrite=True")
    with torch.no_grad():
        env = split.tensors(*split.example_inputs)
        probe = _batch_probe(split)
    with staged_folder(out) as staging:
        parts = [
            _write_part(staging, part, module, env, probe)
            for part, module in zip(split.layout.parts, split.modules, strict=True)
        ]
        onnx_note = _write_onnx(staging, parts) if onnx else "not requested"
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        manifest = _manifest(split, env, parts, source, pruning_plan, expected_costs, onnx_note, probe, files)
        (staging / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1))
    return out


@dataclass
class _Probe:
    """The split model run at twice the example batch: which tensors carry the batch dimension."""

    batch: int | None
    env: dict[str, Any] | None
    note: str

    def carries(self, name: str, example: Any) -> bool:
        if self.env is None or not isinstance(example, torch.Tensor) or example.dim() == 0:
            return False
        doubled = self.env[name]
        return example.shape[0] == self.batch and doubled.shape == (2 * self.batch, *example.shape[1:])


def _batch_probe(split: SplitModel) -> _Probe:
    inputs = split.example_inputs
    sizes = {x.shape[0] if isinstance(x, torch.Tensor) and x.dim() else None for x in inputs}
    if len(sizes) != 1 or None in sizes:
        return _Probe(None, None, "the model inputs share no leading batch dimension")
    (batch,) = sizes
    try:
        env = split.tensors(*(torch.cat([x, x]) for x in inputs))
    except Exception as err:  # noqa: BLE001 - any failure means the traced graph fixed the batch size
        return _Probe(None, None, f"the traced graph fixes the batch size ({_first_line(err)})")
    return _Probe(batch, env, "")


@dataclass
class _WrittenPart:
    spec: PartSpec
    file: str
    program: torch.export.ExportedProgram
    batch: str  # dynamic | static | none (no input carries the batch dimension)
    note: str
    batch_dims: dict[str, int | None]
    max_abs_diff: float
    onnx: str | None = None


def _write_part(staging: Path, part: PartSpec, module: fx.GraphModule, env, probe: _Probe) -> _WrittenPart:
    program, batch, note, diff = _capture(part, module, env, probe)
    _refuse_pickled_contents(program, part.name)
    program.example_inputs = None  # torch.export.save would pickle them
    file = f"{part.name}.pt2"
    torch.export.save(program, staging / file)
    _check_archive(staging / file)
    dims = {n: 0 if batch == "dynamic" and probe.carries(n, env[n]) else None for n in (*part.inputs, *part.outputs)}
    return _WrittenPart(part, file, program, batch, note, dims, diff)


def _capture(part: PartSpec, module: fx.GraphModule, env, probe: _Probe):
    """(program, batch, note, max abs diff). `batch` is `dynamic` where the part takes any batch size
    (exported at twice the example batch, checked at the example batch), `none` where no input of the
    part carries the batch (its outputs do not depend on it), else `static`."""
    carrying = [probe.carries(n, env[n]) for n in part.inputs]
    batch, note = ("static", probe.note) if probe.env is None else ("none", "no input carries the batch dimension")
    if any(carrying):
        try:
            program = _export(module, tuple(probe.env[n] for n in part.inputs), carrying)
            return program, "dynamic", "", _max_diff(part, program, env)
        except Exception as err:  # noqa: BLE001 - fall back to a static program and say why
            batch, note = "static", f"dynamic batch export failed, static instead: {_first_line(err)}"
    try:
        program = _export(module, tuple(env[n] for n in part.inputs), [])
    except Exception as err:
        raise ExportError(f"torch.export cannot capture {part.name}: {_first_line(err)}") from err
    return program, batch, note, _max_diff(part, program, env)


def _export(module: fx.GraphModule, args: tuple[torch.Tensor, ...], dynamic: list[bool]):
    batch = Dim("batch", min=1)
    shapes = tuple({0: batch} if d else None for d in dynamic) if any(dynamic) else None
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=shapes, strict=False)


def _max_diff(part: PartSpec, program, env) -> float:
    """Run the exported part at the example inputs; it must reproduce the split part's outputs."""
    with torch.no_grad():
        got = as_tuple(program.module()(*(env[n] for n in part.inputs)))
    diff = 0.0
    for name, a in zip(part.outputs, got, strict=True):
        b = env[name]
        if a.shape != b.shape or not torch.allclose(a.float(), b.float(), **_CHECK):
            raise ExportError(
                f"exported {part.name} computes {name} differently from the split part "
                f"(shape {tuple(a.shape)} vs {tuple(b.shape)}); please report this model"
            )
        diff = max(diff, float((a.float() - b.float()).abs().max()) if a.numel() else 0.0)
    return diff


def _refuse_pickled_contents(program, name: str) -> None:
    stored = {**program.state_dict, **program.constants}
    odd = [k for k, v in stored.items() if type(v) not in (torch.Tensor, nn.Parameter)]
    if odd:
        raise ExportError(
            f"{name} holds {', '.join(f'{k} ({type(stored[k]).__name__})' for k in odd[:3])}, which torch.export.save "
            "would pickle; decomp exports only plain tensors so that loading never unpickles. Convert them to "
            "plain tensors (e.g. dequantize) before splitting."
        )


def _write_onnx(staging: Path, parts: list[_WrittenPart]) -> str:
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        note = (
            f"ONNX skipped: {' and '.join(missing)} not installed (pip install onnx onnxscript); "
            "the .pt2 parts are complete without it"
        )
        warnings.warn(note, stacklevel=3)
        return note
    for part in parts:
        file = f"{part.spec.name}.onnx"
        try:
            torch.onnx.export(
                part.program,
                f=str(staging / file),
                input_names=list(part.spec.inputs),
                output_names=list(part.spec.outputs),
                dynamo=True,
                external_data=False,
            )
            part.onnx = file
        except Exception as err:  # noqa: BLE001 - ONNX is an optional extra; the .pt2 part stands
            (staging / file).unlink(missing_ok=True)
            part.note = "; ".join(filter(None, [part.note, f"ONNX export failed: {_first_line(err)}"]))
    return "written where the part's note does not say otherwise"


def _tensor_info(name: str, value: torch.Tensor, batch_dim: int | None = None) -> TensorInfo:
    return TensorInfo(name, tuple(value.shape), _dtype(value), batch_dim)


def _dtype(value: torch.Tensor) -> str:
    return str(value.dtype).removeprefix("torch.")


def _as_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if value is None or isinstance(value, (list, str, int, float, bool)):
        return value
    if hasattr(value, "to_json"):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise ExportError(f"cannot record a {type(value).__name__} in the manifest; give a dict or a record with to_json()")


def _manifest(split: SplitModel, env, parts: list[_WrittenPart], source, pruning_plan, costs, onnx_note, probe, files):
    layout = split.layout
    dynamic = probe.env is not None and all(p.batch != "static" for p in parts)
    made = {n: p.spec.name for p in parts for n in p.spec.outputs}

    def carried(name: str) -> bool:
        return dynamic and probe.carries(name, env[name])

    return Manifest(
        format=FORMAT,
        torch=torch.__version__,
        source=source,
        tracer=split.tracer,
        pruning_plan=pruning_plan,
        partition_plan=split.plan,
        batch="dynamic" if dynamic else "static",
        inputs=tuple(
            _tensor_info(n, env[n], 0 if dynamic and probe.carries(n, env[n]) else None) for n in layout.inputs
        ),
        outputs=tuple(_tensor_info(n, env[n]) for n in layout.outputs),
        parts=tuple(
            PartEntry(
                name=p.spec.name,
                file=p.file,
                onnx=p.onnx,
                device=p.spec.device,
                inputs=tuple(_tensor_info(n, env[n], p.batch_dims[n]) for n in p.spec.inputs),
                outputs=tuple(_tensor_info(n, env[n], p.batch_dims[n]) for n in p.spec.outputs),
                batch=p.batch,
                note=p.note,
                max_abs_diff=p.max_abs_diff,
            )
            for p in parts
        ),
        edges=tuple(
            EdgeEntry(
                source=made.get(n),
                target=parts[k].spec.name if k is not None else None,
                tensor=n,
                shape=tuple(env[n].shape),
                dtype=_dtype(env[n]),
                bytes=env[n].numel() * env[n].element_size(),
            )
            for _, k, n in layout.edges()
        ),
        expected_costs=_as_json(costs),
        onnx=onnx_note,
        weights="inside each .pt2 as raw tensor bytes; no file in this folder is unpickled on load",
        files=files,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:300] if text else ''}"


# -- reading -----------------------------------------------------------------------------------------
class ExportedPart:
    """One loaded part: checks its inputs' shapes and dtypes against the manifest, then runs the
    program (`module`, the `ExportedProgram.module()`)."""

    def __init__(self, entry: PartEntry, module: fx.GraphModule) -> None:
        self.entry = entry
        self.name = entry.name
        self.module = module

    def spec(self) -> PartSpec:
        return self.entry.spec()

    def to(self, device: str | torch.device) -> ExportedPart:
        """Move the part's weights to `device`; returns the part. A graph that makes tensors on a fixed
        device (torch.export traces often bake `device=cpu` into `arange`) keeps making them there."""
        self.module = self.module.to(device)
        return self

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        expected = self.entry.inputs
        if len(inputs) != len(expected):
            names = ", ".join(i.name for i in expected)
            raise InputShapeError(f"part {self.name} takes {len(expected)} input(s) ({names}), got {len(inputs)}")
        for value, info in zip(inputs, expected, strict=True):
            _check_input(self.name, value, info)
        return as_tuple(self.module(*inputs))


def _check_input(part: str, value: Any, info: TensorInfo) -> None:
    expected = info.shape
    if not isinstance(value, torch.Tensor):
        raise InputShapeError(f"part {part} input {info.name!r} must be a tensor, got {type(value).__name__}")
    shape = tuple(value.shape)
    free = info.batch_dim
    fits = len(shape) == len(expected) and all(
        a == b or i == free for i, (a, b) in enumerate(zip(shape, expected, strict=True))
    )
    if not fits:
        text = ", ".join("B" if i == free else str(d) for i, d in enumerate(expected))
        hint = " (B: any batch size)" if free is not None else " (this part was exported for this batch size only)"
        raise InputShapeError(f"part {part} input {info.name!r} has shape {shape}, expected ({text}){hint}")
    dtype = _dtype(value)
    if dtype != info.dtype:
        raise InputShapeError(f"part {part} input {info.name!r} has dtype {dtype}, expected {info.dtype}")


@dataclass
class LoadedExport:
    """An export folder loaded in this process: `modules[i]` runs `layout.parts[i]`."""

    folder: Path
    manifest: Manifest
    layout: PartsLayout
    modules: list[ExportedPart]

    def __call__(self, *inputs: torch.Tensor) -> tuple[Any, ...]:
        """Run the parts one after another; returns the model's flattened outputs in layout order."""
        return run_local(self.layout, self.modules, *inputs)


def _verified(folder: Path, manifest: Manifest, file: str) -> Path:
    """The path of `file` after checking it is the file the manifest lists, byte for byte."""
    digest = manifest.files.get(file)
    if Path(file).name != file or file in ("", ".", "..") or digest is None:
        raise ExportError(f"{folder / MANIFEST} names file {file!r} without a checksum; re-export the model")
    path = folder / file
    if not path.is_file():
        raise ExportError(f"{path} is missing; the manifest lists it. Restore the file or re-export the model")
    actual = _sha256(path)
    if actual != digest:
        raise ExportError(
            f"{path} has changed since export (sha256 {actual[:16]}..., the manifest says {digest[:16]}...); "
            "restore the file or re-export the model"
        )
    return path


def _check_archive(path: Path) -> None:
    """Refuse a .pt2 archive holding any record `torch.export.load` would unpickle (or one this
    check does not know), so that loading stays pickle-free."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = {info.filename.partition("/")[2]: info for info in archive.infolist()}
            unknown = sorted(r for r in records if not _ARCHIVE_RECORDS.fullmatch(r))
            sample = records.get("data/sample_inputs/model.pt")
            configs = [
                json.loads(archive.read(records[c]))
                for c in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json")
                if c in records
            ]
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError) as err:
        raise ExportError(f"{path} is not a torch.export archive ({err}); re-export the model") from None
    pickled = [k for c in configs for k, meta in c.get("config", {}).items() if meta.get("use_pickle")]
    if unknown or pickled or (sample is not None and sample.file_size):
        what = unknown[:3] or pickled[:3] or ["example inputs"]
        raise ExportError(
            f"{path} holds {', '.join(what)}, which torch.export.load would unpickle or decomp does not know; "
            "decomp loads only pickle-free archives. Re-export the model with export_split (same torch version)."
        )


def _load(folder: Path, manifest: Manifest, entry: PartEntry, verify: bool = True) -> ExportedPart:
    path = _verified(folder, manifest, entry.file) if verify else folder / entry.file
    _check_archive(path)
    try:
        program = torch.export.load(path)
    except Exception as err:
        raise ExportError(
            f"torch {torch.__version__} cannot load {path} (written by torch {manifest.torch}): {_first_line(err)}"
        ) from err
    return ExportedPart(entry, program.module())


def load_export(folder: str | Path) -> LoadedExport:
    """Load every part of an export folder, checking each file's checksum first."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for file in manifest.files:
        _verified(folder, manifest, file)
    modules = [_load(folder, manifest, entry, verify=False) for entry in manifest.parts]
    return LoadedExport(folder, manifest, manifest_layout(manifest), modules)


def load_part(folder: str | Path, index: int) -> ExportedPart:
    """Load only part `index` (its position in the manifest's run order): reads the manifest and that
    one file, so each worker of a distributed runtime pays for its own part only."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    parts = manifest.parts
    if not 0 <= index < len(parts):
        raise ExportError(f"{folder} has {len(parts)} parts (0..{len(parts) - 1}), no part {index}")
    return _load(folder, manifest, parts[index])


def verify_export(folder: str | Path, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> float:
    """Run the export and the unpartitioned model on `example_inputs`; the largest absolute difference
    over all outputs."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    loaded = load_export(folder)
    with torch.no_grad():
        expected = flat_outputs(model(*inputs))
        got = loaded(*inputs)
    return outputs_diff(got, expected, "the export", ExportError)
