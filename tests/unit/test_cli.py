"""`decomp graph` end to end on a tiny model."""

import json
import subprocess
import sys

from typer.testing import CliRunner

from cluster.cli import app
from tests.tiny_models import tiny_macs

SPEC = "python:tests.tiny_models:tiny_net"


def test_graph_prints_blocks_and_writes_json_and_png(tmp_path):
    out, png = tmp_path / "g.json", tmp_path / "g.png"
    result = CliRunner().invoke(app, ["graph", SPEC, "--depth", "1", "--json", str(out), "--png", str(png)])
    assert result.exit_code == 0, result.output
    assert "branches" in result.output and f"{tiny_macs():,}" in result.output
    assert "prunable groups 4" in result.output
    data = json.loads(out.read_text())
    assert data["totals"]["macs"] == tiny_macs() and data["totals"]["params"] > 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_graph_with_input_shape_and_block_count():
    result = CliRunner().invoke(app, ["graph", SPEC, "--input-shape", "1,3,16,16", "--blocks", "2"])
    assert result.exit_code == 0, result.output
    assert f"{tiny_macs(16, 16):,}" in result.output and "in 4 blocks" in result.output


def test_errors_exit_2_with_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "from cluster.cli import main; main()", "graph", "nope:model"],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 2
    assert "SpecError: unknown model spec 'nope:model'" in proc.stderr and "Traceback" not in proc.stderr
