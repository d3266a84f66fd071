"""What the front shows is what the export gives: a search on a trained residual CNN with BatchNorm (bundled
digits), fidelity levels from adaptive BN to a full fine-tune, then every front candidate exported (with the
weights its accuracy was measured with) and run on the test split: the accuracy equals the front's."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_model

from cluster.config import parse_config
from cluster.export import export_candidate
from cluster.review import review_run
from cluster.runtime import run_export
from cluster.scoring import score_export
from cluster.search_job import run_search
from decomp.data import load_data
from decomp.pruning import TrainConfig, evaluate, train
from decomp.zoo import residual_cnn

pytestmark = pytest.mark.ray

DATA = "digits?seed=0"
MODEL = "python:decomp.zoo:residual_cnn?side=8"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    model, _ = residual_cnn(side=8)
    splits = load_data(DATA)
    train_loader, test_loader = splits.loaders(64, seed=0)
    train(model, train_loader, TrainConfig(epochs=12, lr=3e-3, seed=0))
    assert evaluate(model, test_loader) > 0.9  # a trained starting point, or nothing below means much
    path = tmp_path_factory.mktemp("base") / "weights.safetensors"
    save_model(model, str(path))
    return path


def test_every_front_candidate_exports_with_the_accuracy_the_front_shows(tmp_path, trained):
    config = parse_config(
        {
            "name": "digits",
            "model": MODEL,
            "weights": str(trained),
            "data": DATA,
            "objectives": ["accuracy", "macs"],
            "space": {"levels": [1.0, 0.75, 0.5, 0.25], "max_parts": 2},
            "searcher": {"name": "nsga2", "seed": 0, "settings": {"population": 8}},
            "budget": {"evaluations": 24},
            "cluster": "cpu-host-x2",
            "latency": {"batch_size": 4},
            "evaluators": {"count": 2},
            "accuracy": {"finetune_epochs": 1, "short_epochs": 0.3, "bn_batches": 4, "batch_size": 64},
            "run": {"folder": str(tmp_path / "run")},
        }
    )
    summary = run_search(config)
    assert summary.trials == 24 and summary.failed == 0
    review = review_run(tmp_path / "run")
    levels = {int(r.evaluation.metrics["level"]) for r in review.rows}
    assert levels == {0, 1, 2}  # candidates stopped at every level, some climbed to the top
    dense = [r for r in review.rows if r.candidate.pruning is not None and not r.candidate.pruning.groups]
    assert dense and min(r.candidate.id for r in dense) == 0  # the unpruned model is the first candidate asked
    for row in review.front:
        out = tmp_path / f"export_{row.candidate.id}"
        exported = export_candidate(tmp_path / "run", row.candidate.id, out)
        assert exported["weights"] is not None
        score = score_export(out, DATA, "test", local=True)
        assert score.recorded == pytest.approx(row.evaluation.metrics["test_accuracy"])
        assert abs(score.difference) <= 0.003, (row.candidate.id, score.accuracy, score.recorded)
    # decomp run defaults to the batch the search priced: micro-batches of the graph's batch
    report = run_export(out, batches=1, local=True)
    micro = config.latency.micro_batches
    assert (report.batch_size, report.micro_batches) == (4 * micro, micro)
