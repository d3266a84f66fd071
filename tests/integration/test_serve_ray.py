"""`decomp serve`: an export served by Ray Serve answers over HTTP and through its Python handle with what the
export computes (the `decomp run` outputs), batches requests of any size, and refuses a bad request by name."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch
from ray import serve

from cluster.runtime import export_inputs
from cluster.serve import _pad, load_test, serve_export
from decomp.partition import load_export, read_manifest
from decomp.partition.job import SplitRequest, run_split

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("local_ray")]
PORT = 8931


def _post(body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_served_outputs_are_the_exports_and_requests_batch(tmp_path):
    out = tmp_path / "out"
    run_split(SplitRequest("python:tests.tiny_models:tiny_net", 2), out)
    model = load_export(out)
    try:
        handle = serve_export(out, port=PORT, transport="gloo")
        for count in (1, 3):
            (x,) = export_inputs(read_manifest(out), count, seed=count)
            (want,) = model(x)
            (got,) = handle.infer.remote([x]).result()
            assert got.shape == want.shape and (got - want).abs().max() <= 1e-5
            answer = torch.tensor(_post({"inputs": [x.tolist()]})["outputs"][0])
            assert (answer - want).abs().max() <= 1e-5
        with pytest.raises(urllib.error.HTTPError) as bad:
            _post({"inputs": [[[1.0, 2.0]]]})
        assert bad.value.code == 400 and "the export takes (batch," in bad.value.read().decode()
        report = load_test(f"http://127.0.0.1:{PORT}/", [x[:1]], requests=12, concurrency=4)
        assert report.requests == 12 and 0 < report.p50_s <= report.p99_s and report.throughput > 0
    finally:
        serve.shutdown()


def test_padding_fills_a_fixed_batch_with_the_last_sample():
    x = torch.arange(6.0).view(3, 2)
    (padded,) = _pad([x], 4)
    assert padded.shape == (4, 2) and torch.equal(padded[3], x[2]) and torch.equal(padded[:3], x)
    assert _pad([x], 3)[0] is x
