"""A search job with a `train:` section on a real Ray: the base is trained once before the search, the evaluator
actors prune every candidate from it and import the job's model module from beside the job file (the driver
runs from another folder), and a resume reuses the base."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from cluster.review import review_run
from cluster.runs import BASE
from cluster.search_job import run_search
from decomp.training import read_trained

pytestmark = pytest.mark.ray

MODEL = """
import torch
from torch import nn


def small_cnn(classes=10):
    layers = [nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, classes)]
    model = nn.Sequential(*layers)
    return model, torch.zeros(1, 1, 8, 8)
"""


def test_evaluators_prune_the_trained_base_and_import_the_model_beside_the_job_file(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "beside_the_job_cnn.py").write_text(textwrap.dedent(MODEL))
    job = {
        "name": "based-ray",
        "model": "python:beside_the_job_cnn:small_cnn",
        "data": "digits?train=400&test=200",
        "train": {"epochs": 3, "lr": 0.01, "batch_size": 16},
        "base_accuracy": 0.5,
        "objectives": ["accuracy", "macs"],
        "space": {"levels": [1.0, 0.5], "max_parts": 1},
        "searcher": {"name": "random", "seed": 0},
        "budget": {"evaluations": 6},
        "accuracy": {"bn_batches": 1},  # no fine-tune level: the unpruned candidate is the base as trained
        "evaluators": {"count": 2, "cpus": 1},
        "run": {"folder": str(tmp_path / "run")},
    }
    (jobs / "job.yaml").write_text(yaml.safe_dump(job))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    notes: list[str] = []
    summary = run_search(jobs / "job.yaml", note=notes.append)
    assert summary.complete == 6 and summary.failed == 0
    base = read_trained(tmp_path / "run" / BASE)
    assert any(n.startswith("training the base model: epoch 3/3") for n in notes)
    unpruned = [r for r in review_run(tmp_path / "run").rows if not r.candidate.pruning.groups]
    assert unpruned and all(r.evaluation.metrics["test_accuracy"] == base.test_accuracy for r in unpruned)
    notes.clear()
    again = run_search(tmp_path / "run", resume=True, note=notes.append)
    assert again.trials == 6 and any(n.startswith("base model trained before") for n in notes)
    assert read_trained(tmp_path / "run" / BASE) == base
