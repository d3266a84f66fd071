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
