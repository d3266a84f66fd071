"""Exporting a split model: the folder reloads without the model's code or pickle, composes to the
model, and refuses missing, changed, newer or pickled files."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from decomp import build_graph
from decomp.errors import ExportError, InputShapeError
from decomp.partition.export import export_split, load_export, load_part, verify_export
from decomp.partition.manifest import FORMAT, Manifest, read_manifest
from decomp.partition.plan import PartitionPlan, repair
from decomp.partition.split import flat_outputs, split_model
from decomp.pruning import apply_plan, find_groups, plan_for_ratio


class Branches(nn.Module):
    """A stem, two parallel branches concatenated, a head; also returns the stem's pooled features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.left = nn.Conv2d(6, 4, 1)
        self.right = nn.Sequential(nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = torch.cat([self.left(s), self.right(s)], dim=1)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1)), s.mean(dim=(2, 3))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 4)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(y + self.conv2(y))
        return self.fc(torch.flatten(F.max_pool2d(y, 2), 1))


class FixedBatch(nn.Module):
    """`view(1, -1)` fixes the batch size at 1, so the export can only be static."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(self.conv(x).view(1, -1))


class Positional(nn.Module):
    """Adds a table computed from no input at all: a part holding only that takes no batch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x + torch.arange(4.0) / 4)


def _model(cls) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def _image(batch: int = 2) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch)),)


def _plan(graph, parts: int, mode: str) -> PartitionPlan:
    nodes = graph.compute_nodes()
    if mode == "pipeline":
        return PartitionPlan.pipeline(graph, [len(nodes) * k // parts for k in range(1, parts)])
    return repair(graph, {n: i % parts for i, n in enumerate(nodes)})


def _max_diff(got, expected) -> float:
    assert len(got) == len(expected)
    return max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Branches split in DAG mode with its branches in different parts, exported once."""
    model, inputs = _model(Branches), _image()
    graph = build_graph(model, inputs)
    part = {
        n: 1 if graph[n]["module"].startswith("left") else 2 if graph[n]["module"].startswith("right") else 0
        for n in graph.compute_nodes()
    }
    cat = graph.compute_nodes().index("cat")
    part.update({n: 3 for n in graph.compute_nodes()[cat:]})
    plan = PartitionPlan.from_assignment(part, "dag", devices=("cpu", "cpu", "cpu", "cpu"), graph=graph)
    split = split_model(model, inputs, plan)
    folder = export_split(
        split, tmp_path_factory.mktemp("x") / "export", source="python:tests:branches", expected_costs={"macs": 123}
    )
    return model, split, folder


@pytest.fixture
def copy_of(exported, tmp_path):
    """A private copy of the exported folder, to tamper with."""
    return shutil.copytree(exported[2], tmp_path / "copy")


@pytest.mark.parametrize(
    ("cls", "parts", "mode"), [(Residual, 2, "pipeline"), (Residual, 3, "dag"), (Branches, 3, "pipeline")]
)
def test_export_loads_and_composes_to_the_model(tmp_path, cls, parts, mode):
    model, inputs = _model(cls), _image()
    split = split_model(model, inputs, _plan(build_graph(model, inputs), parts, mode))
    folder = export_split(split, tmp_path / "out")
    loaded = load_export(folder)
    with torch.no_grad():
        assert _max_diff(loaded(*inputs), flat_outputs(model(*inputs))) <= 1e-5
    assert verify_export(folder, model, inputs) <= 1e-5
    assert len(loaded.modules) == parts and loaded.layout == split.layout


def test_pruned_model_exports_with_its_pruning_plan(tmp_path):
    model, inputs = _model(Residual), _image()
    pruned = apply_plan(model, plan_for_ratio(find_groups(model, inputs), 0.5), inputs, "physical")
    split = split_model(pruned.module, inputs, _plan(build_graph(pruned.module, inputs), 2, "pipeline"))
    folder = export_split(split, tmp_path / "out", pruning_plan=pruned.plan)
    assert verify_export(folder, pruned.module, inputs) <= 1e-5
    assert read_manifest(folder).pruning_plan == pruned.plan


def test_manifest_describes_parts_edges_and_files(exported):
    _, split, folder = exported
    manifest = read_manifest(folder)
    assert manifest.format == FORMAT and manifest.source == "python:tests:branches"
    assert manifest.partition_plan == split.plan
    assert manifest.expected_costs == {"macs": 123} and manifest.batch == "dynamic"
    assert [p.name for p in manifest.parts] == [p.name for p in split.layout.parts]
    assert all(p.device == "cpu" and p.file == f"{p.name}.pt2" for p in manifest.parts)
    first = manifest.to_json()["parts"][0]
    assert first["inputs"] == [{"name": "x", "shape": [2, 3, 8, 8], "dtype": "float32", "batch_dim": 0}]
    edges = {(e.source, e.target, e.tensor) for e in manifest.edges}
    assert {(None, "part_0", "x"), ("part_0", "part_1", "relu"), ("part_0", "part_2", "relu")} <= edges
    assert ("part_1", "part_2", "left") not in edges  # the branches run side by side
    for name, digest in manifest.files.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert set(manifest.files) == {f"part_{k}.pt2" for k in range(4)}
    text = (folder / "manifest.json").read_text()  # the record writes the file it was read from, byte for byte
    assert json.dumps(Manifest.from_json(json.loads(text)).to_json(), indent=1) == text


def test_loaded_parts_take_any_batch_size(exported):
    model, _, folder = exported
    inputs = _image(batch=5)
    with torch.no_grad():
        assert _max_diff(load_export(folder)(*inputs), flat_outputs(model(*inputs))) <= 1e-5


def test_parts_load_one_at_a_time(exported):
    model, split, folder = exported
    inputs = _image()
    env = dict(zip(split.layout.inputs, inputs, strict=True))
    for index, spec in enumerate(split.layout.parts):
        part = load_part(folder, index).to("cpu")
        assert part.spec() == spec
        env.update(zip(spec.outputs, part(*(env[n] for n in spec.inputs)), strict=True))
    with torch.no_grad():
        assert _max_diff([env[n] for n in split.layout.outputs], flat_outputs(model(*inputs))) <= 1e-5
    with pytest.raises(ExportError, match="has 4 parts"):
        load_part(folder, 4)


def test_input_of_the_wrong_shape_names_part_input_and_expected_shape(exported):
    part = load_part(exported[2], 0)
    with pytest.raises(
        InputShapeError, match=r"part part_0 input 'x' has shape \(2, 3, 9, 8\), expected \(B, 3, 8, 8\)"
    ):
        part(torch.randn(2, 3, 9, 8))
    with pytest.raises(InputShapeError, match="dtype float64, expected float32"):
        part(torch.randn(2, 3, 8, 8, dtype=torch.float64))


def test_a_graph_that_fixes_the_batch_exports_static_and_says_so(tmp_path):
    model, inputs = _model(FixedBatch), _image(batch=1)
    split = split_model(model, inputs, _plan(build_graph(model, inputs), 2, "pipeline"))
    folder = export_split(split, tmp_path / "out")
    manifest = read_manifest(folder)
    assert manifest.batch == "static" and "fixes the batch size" in manifest.parts[0].note
    assert verify_export(folder, model, inputs) <= 1e-5
    with pytest.raises(InputShapeError, match="exported for this batch size only"):
        load_export(folder)(*_image(batch=2))


def test_a_part_that_reads_no_batched_input_does_not_fix_the_batch(tmp_path):
    model, inputs = _model(Positional), (torch.randn(2, 4),)
    graph = build_graph(model, inputs, tracer="export")  # fx would fold the table into a constant
    assert graph.compute_nodes() == ["arange", "div", "add", "linear"]
    assignment = {"arange": 0, "div": 0, "add": 1, "linear": 1}
    plan = PartitionPlan.from_assignment(assignment, "dag", graph=graph)
    split = split_model(model, inputs, plan, tracer="export")
    manifest = read_manifest(export_split(split, tmp_path / "out"))
    assert manifest.parts[0].inputs == ()
    assert [p.batch for p in manifest.parts] == ["none", "dynamic"] and manifest.batch == "dynamic"
    batch5 = torch.randn(5, 4)
    with torch.no_grad():
        assert _max_diff(load_export(tmp_path / "out")(batch5), [model(batch5)]) <= 1e-5


def test_a_missing_file_is_named(copy_of):
    (copy_of / "part_2.pt2").unlink()
    with pytest.raises(ExportError, match=r"part_2\.pt2 is missing"):
        load_export(copy_of)
    load_part(copy_of, 0)  # the other parts still load one by one
    with pytest.raises(ExportError, match=r"part_2\.pt2 is missing"):
        load_part(copy_of, [p.name for p in read_manifest(copy_of).parts].index("part_2"))


def test_a_changed_byte_is_caught(copy_of):
    path = copy_of / "part_1.pt2"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"part_1\.pt2 has changed since export"):
        load_export(copy_of)


def test_a_newer_format_names_both_versions(copy_of):
    manifest = json.loads((copy_of / "manifest.json").read_text())
    manifest["format"] = "decomp.export/2"
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=r"decomp\.export/2, newer than this decomp reads \(decomp\.export/1\)"):
        load_export(copy_of)
    with pytest.raises(ExportError, match="upgrade decomp"):
        load_part(copy_of, 0)


def test_a_manifest_with_unknown_or_missing_keys_is_damaged(copy_of):
    manifest = json.loads((copy_of / "manifest.json").read_text())
    manifest["parts"][0]["colour"] = "red"
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=r"damaged \(unknown key\(s\) colour in a part entry; valid keys: name, file"):
        load_export(copy_of)
    del manifest["parts"][0]["colour"], manifest["tracer"]
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="manifest.json is damaged .*; re-export the model"):
        load_part(copy_of, 0)


def test_a_folder_without_manifest_is_refused(tmp_path):
    with pytest.raises(ExportError, match="has no manifest.json"):
        load_export(tmp_path)


def test_an_archive_that_would_unpickle_is_refused(copy_of):
    """A part re-saved the plain torch way (example inputs pickled inside), checksum updated to match."""
    model, inputs = _model(Residual), _image()
    program = torch.export.export(model, inputs)
    torch.export.save(program, copy_of / "part_0.pt2")
    with zipfile.ZipFile(copy_of / "part_0.pt2") as archive:
        assert any(i.filename.endswith("sample_inputs/model.pt") and i.file_size for i in archive.infolist())
    manifest = json.loads((copy_of / "manifest.json").read_text())
    manifest["files"]["part_0.pt2"] = hashlib.sha256((copy_of / "part_0.pt2").read_bytes()).hexdigest()
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="would unpickle"):
        load_part(copy_of, 0)


def test_a_failure_mid_export_leaves_nothing_behind(tmp_path, monkeypatch):
    model, inputs = _model(Residual), _image()
    split = split_model(model, inputs, _plan(build_graph(model, inputs), 3, "pipeline"))
    save, calls = torch.export.save, []

    def failing_save(program, path, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        save(program, path, **kwargs)

    monkeypatch.setattr(torch.export, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_split(split, tmp_path / "out")
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_kept_unless_overwrite(tmp_path):
    model, inputs = _model(Residual), _image()
    split = split_model(model, inputs, _plan(build_graph(model, inputs), 2, "pipeline"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export_split(split, out)
    assert (out / "notes.txt").read_text() == "keep me"
    export_split(split, out, overwrite=True)
    assert not (out / "notes.txt").exists() and verify_export(out, model, inputs) <= 1e-5
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_onnx_is_written_or_skipped_with_a_note(tmp_path):
    import importlib.util

    model, inputs = _model(Residual), _image()
    split = split_model(model, inputs, _plan(build_graph(model, inputs), 2, "pipeline"))
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxscript") is None:
        with pytest.warns(UserWarning, match="ONNX skipped"):
            folder = export_split(split, tmp_path / "out", onnx=True)
        assert read_manifest(folder).onnx.startswith("ONNX skipped")
        assert all(p.onnx is None for p in read_manifest(folder).parts)
    else:
        folder = export_split(split, tmp_path / "out", onnx=True)
        assert any(p.onnx for p in read_manifest(folder).parts)


def test_loads_in_a_fresh_process_without_model_code_or_pickle(exported, tmp_path):
    """The model class lives only in this test module; the child process cannot import it, and every
    unpickling entry point raises there."""
    model, _, folder = exported
    inputs = _image(batch=3)
    with torch.no_grad():
        expected = flat_outputs(model(*inputs))
    save_file({"x": inputs[0], **{f"out{i}": t for i, t in enumerate(expected)}}, str(tmp_path / "io.safetensors"))
    script = textwrap.dedent(
        f"""
        import importlib.util, pickle, sys
        import torch

        def forbidden(*args, **kwargs):
            raise RuntimeError("unpickling attempted")

        class NoUnpickler(pickle.Unpickler):
            load = find_class = forbidden

        pickle.load = pickle.loads = torch.load = torch._C._pickle_load_obj = forbidden
        pickle.Unpickler = NoUnpickler
        assert importlib.util.find_spec("tests") is None, "the test package must not be importable"
        from safetensors.torch import load_file
        from decomp.partition.export import load_export

        io = load_file({str(tmp_path / "io.safetensors")!r})
        got = load_export({str(folder)!r})(io["x"])
        print(max(float((g - io[f"out{{i}}"]).abs().max()) for i, g in enumerate(got)))
        assert not any(name.startswith("tests") for name in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) <= 1e-5
