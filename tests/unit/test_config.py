"""Search job files: the shipped configs validate; bad keys and names are named with the valid ones."""

from pathlib import Path

import pytest
import yaml

from cluster.config import load_config, parse_config
from decomp.errors import SpecError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_validate(path):
    config = load_config(path)
    assert config.objective_records() and config.budget.evaluations
    assert config.joint_config().max_parts <= len(config.cluster_spec().devices)


def test_quickstart_resolves_names_units_and_defaults():
    config = load_config(CONFIGS[[p.stem for p in CONFIGS].index("quickstart")])
    assert [o.direction for o in config.objective_records()] == ["maximize", "minimize", "minimize", "minimize"]
    (memory,) = config.constraint_records()
    assert memory.bound == 64 * 2**20 and memory.sense == "<="
    assert config.run_folder() == Path("runs/quickstart")


@pytest.fixture
def base():
    return yaml.safe_load(CONFIGS[[p.stem for p in CONFIGS].index("quickstart")].read_text())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"searcher": {"name": "nsga2", "setings": {}}}, "unknown key 'setings' in searcher; valid keys: name, seed"),
        ({"modle": "x"}, "unknown key 'modle' in the job file; valid keys: name, model"),
        ({"objectives": ["acc"]}, "unknown objective.*'acc'.*valid: accuracy"),
        (
            {"objectives": [{"name": "macs", "dir": "min"}]},
            "unknown key 'dir' in objectives; valid keys: name, direction",
        ),
        ({"space": {"level": [1.0]}}, "unknown key.*level in space; valid keys: levels"),
        ({"budget": {}}, "budget.evaluations, budget.seconds"),
        ({"constraints": [{"name": "peak_memory"}]}, "exactly one of max or min"),
        ({"constraints": [{"name": "memory", "max": 1}]}, "unknown quantity 'memory'"),
        ({"constraints": [{"name": "peak_memory", "max": "lots"}]}, "cannot read 'lots'"),
        ({"searcher": {"name": "annealing"}}, "unknown searcher 'annealing'; valid searchers: .*nsga2"),
        ({"cluster": "moon-base"}, "neither a preset"),
        ({"evaluators": {"count": 0}}, "evaluators.count"),
        ({"space": {"max_parts": 3}}, "max_parts is 3 but cluster 'cpu-host-x2' has 2 devices"),
        ({"train": {"epochs": 2, "augment": 2}}, "unknown key 'augment' in train; valid keys: epochs, lr, .*shift"),
        ({"train": {"lr": 0.1}}, "missing required key 'train.epochs'"),
        ({"train": {"epochs": 2, "scale": 1.0}}, "train.scale: Input should be less than 1"),
        ({"train": {"epochs": 2, "optimizer": "lbfgs"}}, "train.optimizer: Input should be 'adam' or 'sgd'"),
        ({"train": {"epochs": 2}, "data": None}, "train needs the data .*: give `data`"),
        ({"base_accuracy": 0.9, "train": None, "data": None}, "base_accuracy needs the data"),
        ({"base_accuracy": 98.5}, "base_accuracy: Input should be less than or equal to 1"),
        ({"tracer": "jit"}, "tracer: Input should be 'fx' or 'export'"),
        ({"model": "python:no_such_pkg.models:make"}, "model: no module 'no_such_pkg.models' .* python_path"),
        ({"data": "python:decomp.no_such:make"}, "data: no module 'decomp.no_such'"),
    ],
)
def test_bad_config_names_the_key(base, change, message):
    with pytest.raises(SpecError, match=message):
        parse_config({**base, **change})


def test_missing_required_key_and_unreadable_files(base, tmp_path):
    del base["model"]
    with pytest.raises(SpecError, match="missing required key 'model'"):
        parse_config(base)
    with pytest.raises(SpecError, match="cannot read job file"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_the_train_section_asks_for_the_base_the_search_selects_against(base):
    config = parse_config({**base, "train": {"epochs": 3, "shift": 2}, "searcher": {"name": "nsga2", "seed": 4}})
    request = config.base_request()
    assert (request.model, request.data, request.epochs, request.shift) == (base["model"], base["data"], 3, 2)
    assert (request.validation, request.validation_seed) == (config.accuracy.validation, 4)  # the same held-out share
    assert parse_config({**base, "train": None}).base_request() is None


def test_python_modules_are_found_beside_the_job_file(base, tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "beside_the_job_file_models.py").write_text("from decomp.zoo import lenet5 as make\n")
    (tmp_path / "jobs" / "job.yaml").write_text(
        yaml.safe_dump({**base, "model": "python:beside_the_job_file_models:make"})
    )
    monkeypatch.chdir(tmp_path)  # neither the current folder nor sys.path holds the module
    config = load_config(tmp_path / "jobs" / "job.yaml")
    assert config.python_path is None  # the job file's folder is the default, made explicit when the run opens
    moved = {**base, "model": "python:beside_the_job_file_models:make", "python_path": ["jobs"]}
    assert parse_config(moved, base=tmp_path).python_path == ["jobs"]
    with pytest.raises(SpecError, match=r"no module 'beside_the_job_file_models' .* python_path \(none given"):
        parse_config({**base, "model": "python:beside_the_job_file_models:make"})
