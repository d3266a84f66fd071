"""`decomp calibrate` with the in-process runtime on a tiny model: fits, saves, reloads; bad settings."""

import json

import pytest
from typer.testing import CliRunner

from cluster.calibrate import CalibrateRequest, run_calibration
from cluster.cli import app
from decomp.errors import GraphError, SpecError
from decomp.latency.calibration import fit_runtime, load_calibration, save_calibration
from decomp.latency.predict import Calibration

TINY = "python:tests.tiny_models:tiny_net"


def test_calibrate_command_fits_and_saves(tmp_path):
    out, js, table = tmp_path / "cal.json", tmp_path / "summary.json", tmp_path / "table.json"
    args = ["calibrate", TINY, "--ratios", "0,0.25,0.5", "--parts", "1", "--runtime", "local"]
    args += ["--batches", "3", "--min-seconds", "0.1", "--rounds", "1", "--batch-size", "4", "--micro-batches", "2"]
    result = CliRunner().invoke(app, [*args, "--table", str(table), "--out", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    summary = json.loads(js.read_text())
    assert len(summary["candidates"]) == 3 and table.exists()
    # pruning shrinks the model, so it runs faster (as measured and as predicted)
    measured = [row["measured"] for row in summary["candidates"]]
    predicted = [row["predicted"] for row in summary["candidates"]]
    assert all(p > 0 for p in predicted) and max(measured) > 0
    cal = load_calibration(out, summary["device"], "local")
    assert cal == Calibration.from_json(summary["calibration"])
    with pytest.raises(GraphError, match="not on"):
        load_calibration(out, "cuda:other|threads=1|torch=0")
    with pytest.raises(GraphError, match="runtime"):
        load_calibration(out, runtime="ray")


def test_held_out_ratios_are_measured_and_predicted_but_not_fitted(tmp_path):
    request = CalibrateRequest(
        (TINY,),
        ratios=(0.0, 0.25, 0.5),
        holdout=(0.4,),
        parts=(1,),
        batch_size=4,
        micro_batches=2,
        batches=2,
        rounds=1,
        runtime="local",
        min_seconds=0.0,
        table=str(tmp_path / "t.json"),
        out=str(tmp_path / "c.json"),
    )
    summary = run_calibration(request)
    held = [row for row in summary.candidates if row.held_out]
    assert [row.candidate for row in held] == [f"{TINY} x0.60 K=1"]
    assert summary.holdout_mape == pytest.approx(abs(held[0].error))
    fitted = [row for row in summary.candidates if not row.held_out]
    assert len(fitted) == 3 and summary.mape == pytest.approx(sum(abs(r.error) for r in fitted) / 3)
    # the held-out run is saved with the others, marked, for offline analysis
    runs = json.loads((tmp_path / "c.json").read_text())
    assert "held_out" in json.dumps(runs)


def test_calibration_settings_are_checked():
    with pytest.raises(SpecError, match="one after another"):
        CalibrateRequest((TINY,), parts=(1, 2), runtime="local")
    with pytest.raises(SpecError, match="at least 3"):
        CalibrateRequest((TINY,), ratios=(0.0,), parts=(1,))
    with pytest.raises(SpecError, match="multiple of --micro-batches"):
        CalibrateRequest((TINY,), batch_size=6, micro_batches=4)
    with pytest.raises(SpecError, match="choose one of local, ray"):
        CalibrateRequest((TINY,), runtime="mpi")
    with pytest.raises(SpecError, match=r"\[0.5\] are both fitted on and held out"):
        CalibrateRequest((TINY,), ratios=(0.0, 0.25, 0.5), holdout=(0.5,), parts=(1,), runtime="local")


def test_runtime_fit_recovers_terms_and_stays_non_negative():
    per_call, per_byte = fit_runtime([2e-3 + 1e-9 * b for b in (1e5, 1e6, 3e6)], [1e5, 1e6, 3e6])
    assert per_call == pytest.approx(2e-3) and per_byte == pytest.approx(1e-9)
    assert fit_runtime([1e-3, 2e-3, 3e-3], [0, 0, 0]) == (pytest.approx(2e-3), 0.0)
    assert fit_runtime([3e-3, 2e-3, 1e-3], [1, 2, 3])[1] == 0.0  # falling with bytes: bytes term dropped


def test_calibration_file_round_trip_and_unknown_term(tmp_path):
    cal = Calibration(scale=1.2, per_call=3e-3, per_in_byte=1e-9)
    path = save_calibration(tmp_path / "c.json", "cpu:x|threads=1|torch=t", "ray", cal)
    assert load_calibration(path, "cpu:x|threads=1|torch=t", "ray") == cal
    with pytest.raises(GraphError, match="unknown calibration term"):
        Calibration.from_json({"scale": 1.0, "speed": 2.0})
