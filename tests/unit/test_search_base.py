"""A search job's base model: trained once per run into the run folder (`train:`), reused on resume, the model
every candidate is pruned from and every export is built from; data that cannot train the model, a training
that fails and a base below the accuracy the job claims stop the run with nothing half-written. Also the job
file's module paths, tracer and leaf modules."""

import pickle
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cluster.base_model import prepare_base
from cluster.config import parse_config
from cluster.export import export_candidate
from cluster.measure import module_bytes
from cluster.runs import BASE, open_run
from cluster.search_job import run_search
from cluster.task import ModelTask, job_model, load_job_model
from decomp.errors import DecompError, SpecError
from decomp.partition import load_export
from decomp.specs import load_model
from decomp.training import read_trained
from search.registry import make_searcher
from tests.unit.test_search_job import drive
from tests.unit.test_train_job import one_thread  # noqa: F401 - autouse: tiny models train faster on one thread

TINY = "python:tests.unit.test_train_job:tiny_cnn"
FACTORIES = "python:tests.unit.test_train_job"


def job(tmp_path: Path, **changes) -> dict:
    data = {
        "name": "based",
        "model": TINY,
        "data": "digits?train=300&test=100",
        "train": {"epochs": 2, "lr": 0.01, "batch_size": 16},
        "objectives": ["accuracy", "macs"],
        "searcher": {"name": "random", "seed": 0},
        "budget": {"evaluations": 3},
        "space": {"levels": [1.0, 0.5], "max_parts": 1},
        "accuracy": {"bn_batches": 1, "batch_size": 64},
        "evaluators": {"count": 1},
        "run": {"folder": str(tmp_path / "run")},
    }
    data.update(changes)
    return data


def job_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job(tmp_path, **changes)))
    return path


def test_the_base_is_trained_once_per_run_and_every_candidate_is_pruned_from_it(tmp_path):
    config, folder = open_run(parse_config(job(tmp_path)))
    notes: list[str] = []
    weights = prepare_base(config, folder, notes.append)
    summary = read_trained(folder / BASE)
    assert weights == folder / BASE / "weights.safetensors" and summary.request == config.base_request()
    assert summary.train_samples == 270  # the validation share the search selects on is not trained on
    assert "training the base model: epoch 2/2 ..." in notes and notes[-1].startswith("trained the base model")
    task = ModelTask(config)
    space = task.space()  # built before the base exists, as run_search does
    task.use_base(weights)
    whole = make_searcher("random", space, config.objective_records()).candidate(space.baselines()[0])
    assert not whole.pruning.groups
    measured = task.evaluate(whole).evaluation  # the unpruned model (no BatchNorm to recalibrate) is the base
    assert measured.metrics["test_accuracy"] == summary.test_accuracy > 0.5
    shipped = pickle.loads(pickle.dumps(task))  # what an evaluator receives builds from the base too
    assert shipped.evaluate(whole).evaluation.metrics["test_accuracy"] == summary.test_accuracy
    drive(tmp_path, config, task=task)
    trained = (folder / BASE / "weights.safetensors").stat().st_mtime_ns
    notes.clear()
    result = run_search(folder, resume=True, note=notes.append)  # a finished run: no Ray, the base reused
    assert result.trials == 3 and any(n.startswith("base model trained before") for n in notes)
    assert not any("training" in n for n in notes)
    assert (folder / BASE / "weights.safetensors").stat().st_mtime_ns == trained


def test_an_export_of_a_run_that_trained_its_base_is_built_from_it(tmp_path):
    config, folder = open_run(parse_config(job(tmp_path, objectives=["macs", "params"])))  # nothing measured
    weights = prepare_base(config, folder)
    task = ModelTask(config)
    task.space()
    task.use_base(weights)
    drive(tmp_path, config, task=task)
    export_candidate(folder, 0, tmp_path / "export")  # candidate 0: the unpruned model, asked first
    base = load_model(TINY, weights=weights).module
    x = torch.rand(4, 1, 8, 8)
    (got,) = load_export(tmp_path / "export")(x)
    with torch.no_grad():
        torch.testing.assert_close(got, base(x), rtol=0, atol=1e-5)
    (folder / BASE / "weights.safetensors").unlink()
    with pytest.raises(SpecError, match="trains its base model and .* is missing; decomp search --resume"):
        export_candidate(folder, 0, tmp_path / "again")


def test_a_candidate_whose_measured_weights_were_not_kept_is_not_exported(tmp_path):
    config, folder = open_run(parse_config(job(tmp_path)))  # accuracy measured: every export loads kept weights
    weights = prepare_base(config, folder)
    task = ModelTask(config)
    task.space()
    task.use_base(weights)
    drive(tmp_path, config, task=task)
    kept = sorted(p.stem for p in (folder / "weights").glob("*.safetensors"))
    assert kept and "1" in kept
    (folder / "weights" / "1.safetensors").unlink()
    with pytest.raises(
        SpecError, match=r"candidate 1's measured weights were not kept .* Export one that has them, e.g"
    ):
        export_candidate(folder, 1, tmp_path / "export")
    assert not (tmp_path / "export").exists()  # nothing half-written
    export_candidate(folder, int(kept[0]), tmp_path / "export")  # one that has them exports


def test_a_changed_training_trains_anew_and_a_start_refused_after_training_keeps_only_the_base(tmp_path):
    path = job_file(tmp_path, base_accuracy=0.999)
    with pytest.raises(SpecError, match=r"scores \d+\.\d+% test accuracy on digits.*below the job's base_accuracy"):
        run_search(path)
    folder = tmp_path / "run"
    assert sorted(p.name for p in folder.iterdir()) == [BASE]  # whole, and nothing of a run
    first = read_trained(folder / BASE)
    config, _ = open_run(job_file(tmp_path, base_accuracy=0.2))  # a folder holding only a base is a fresh start
    notes: list[str] = []
    prepare_base(config, folder, notes.append)
    assert read_trained(folder / BASE) == first and notes[0].startswith("base model trained before")
    config, _ = open_run(job_file(tmp_path, train={"epochs": 1, "lr": 0.01, "batch_size": 16}))
    prepare_base(config, folder)
    assert read_trained(folder / BASE).request.epochs == 1  # another recipe: trained anew


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data": f"{FACTORIES}:labelled?high=12"}, r"train labels .* run from 0 to 11, but model .* has 10 outputs"),
        ({"data": f"{FACTORIES}:labelled?side=28"}, r"shape \(1, 28, 28\)\) do not fit model"),
        ({"data": f"{FACTORIES}:labelled?high=12", "train": None}, "run from 0 to 11"),  # checked untrained too
        ({"data": f"{FACTORIES}:nan_inputs"}, "non-finite loss"),  # the training itself fails
        ({"data": "digits?flat=true"}, r"inputs of data digits\?flat=true .* do not fit"),
    ],
)
def test_a_job_whose_data_cannot_train_its_model_writes_nothing(tmp_path, changes, message):
    with pytest.raises(DecompError, match=message):
        run_search(job_file(tmp_path, **changes))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "weights, fix",
    [(True, "check that .*base.safetensors holds this model's weights"), (False, "the job loads no trained weights")],
)
def test_a_base_below_the_accuracy_the_job_claims_is_refused(tmp_path, weights, fix):
    changes = {"train": None, "base_accuracy": 0.95}
    if weights:
        torch.manual_seed(0)
        from safetensors.torch import save_model

        save_model(load_model(TINY).module, str(tmp_path / "base.safetensors"))
        changes["weights"] = "base.safetensors"  # read against the job file's folder
    with pytest.raises(SpecError, match=rf"scores \d+\.\d+% test accuracy .* base_accuracy of 95.00%; {fix}"):
        run_search(job_file(tmp_path, **changes))
    assert not (tmp_path / "run").exists()


def test_python_modules_resolve_beside_the_job_file_in_the_driver_and_the_evaluators(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "beside_job_models.py").write_text("from tests.unit.test_train_job import tiny_cnn\n")
    (jobs / "beside_job_data.py").write_text("from tests.unit.test_train_job import labelled\n")
    path = jobs / "job.yaml"
    changes = {"model": "python:beside_job_models:tiny_cnn", "data": "python:beside_job_data:labelled", "train": None}
    path.write_text(yaml.safe_dump(job(tmp_path, **changes)))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config, folder = open_run(path)
    assert config.python_path == [str(jobs)]
    task = ModelTask(config)
    task.space()
    shipped = pickle.loads(pickle.dumps(task))
    for name in ("beside_job_models", "beside_job_data"):  # an evaluator imports them afresh
        monkeypatch.delitem(sys.modules, name, raising=False)
    shipped.setup()
    assert str(jobs) not in sys.path and "beside_job_data" in sys.modules
    prepare_base(config, folder)  # the data check imports them too


def test_the_job_file_names_the_tracer_and_the_leaf_modules(tmp_path):
    base = {"name": "leaf", "model": "python:tests.tiny_models:tiny_net", "objectives": ["macs"]}
    base |= {"budget": {"evaluations": 2}}
    whole = job_model(parse_config(base)).graph
    leaf = job_model(parse_config({**base, "leaf_modules": ["Branches"]})).graph
    assert "branches_left" in whole.nx and "branches" not in whole.nx
    assert "branches" in leaf.nx and "branches_left" not in leaf.nx
    assert leaf.totals.macs == whole.totals.macs  # a leaf's MACs are measured, not lost
    assert load_job_model(parse_config({**base, "tracer": "export"})).tracer == "export"
    kept = job_model(parse_config({**base, "keep": ["stem"]}))
    assert "stem" not in kept.index and "stem" in job_model(parse_config(base)).index
    assert "stem" not in kept.graph.nx.graph["groups"] and "keep stem" in kept.index.skipped["stem"]
    with pytest.raises(SpecError, match="keep 'stme'.*closest: stem"):
        job_model(parse_config({**base, "keep": ["stme"]}))


def test_a_run_with_leaf_modules_exports(tmp_path):
    changes = {"model": "python:tests.tiny_models:tiny_net", "data": None, "train": None, "leaf_modules": ["Branches"]}
    space = {"levels": [1.0, 0.5], "max_parts": 2}
    config, folder = open_run(parse_config(job(tmp_path, objectives=["macs", "params"], space=space, **changes)))
    drive(tmp_path, config, task=ModelTask(config))
    summary = export_candidate(folder, 1, tmp_path / "export")  # the unpruned model in two parts (second baseline)
    assert summary["max_abs_diff"] <= 1e-5 and summary["parts"] == 2
    x = torch.randn(2, 3, 8, 8)
    (got,) = load_export(tmp_path / "export")(x)
    with torch.no_grad():
        torch.testing.assert_close(got, load_job_model(config).module(x), rtol=0, atol=1e-5)


def test_the_unpruned_model_is_measured_as_it_is_and_pruned_ones_retrain_with_the_base_recipe(tmp_path, monkeypatch):
    import decomp.data

    changes = {
        "model": "python:decomp.zoo:residual_cnn?side=8&width=8",  # BatchNorm: recalibrating would change it
        "train": {"epochs": 1, "lr": 0.01, "batch_size": 16, "shift": 1, "weight_decay": 1e-4},
        "accuracy": {"bn_batches": 2, "finetune_epochs": 0.5, "short_epochs": 0.25, "batch_size": 64},
    }
    config, folder = open_run(parse_config(job(tmp_path, **changes)))
    weights = prepare_base(config, folder)
    summary = read_trained(folder / BASE)
    task = ModelTask(config)
    space = task.space()
    task.use_base(weights)
    searcher = make_searcher("random", space, config.objective_records())
    whole = searcher.candidate(space.baselines()[0])
    pruned = searcher.candidate([g.high if g.name.startswith("keep") else g.low for g in space.genes])
    assert not whole.pruning.prunes() and pruned.pruning.prunes() and task.levels == ("bn", "short", "full")
    calls = []
    augment = decomp.data.augment_images
    monkeypatch.setattr(decomp.data, "augment_images", lambda *a, **k: calls.append(1) or augment(*a, **k))
    top = task.evaluate(whole, 2)
    assert top.evaluation.metrics["test_accuracy"] == summary.test_accuracy and not calls  # no BN pass, no training
    base = load_model(config.model, str(weights), [(1, 1, 8, 8)]).module
    assert top.weights == module_bytes(base)  # the weights the user brought, byte for byte
    assert task.evaluate(pruned, 2).evaluation.ok and calls  # fine-tuned with the base's augmentation
