"""The searcher registry and the settings records: names and settings are checked without a space, and
an unknown or bad setting is an error that lists the searcher's valid settings from its one declaration."""

import dataclasses
import re

import pytest

from decomp.errors import SearchError
from search.records import Objective
from search.registry import SEARCHERS, check_searcher, make_searcher, searcher_names
from search.searchers import NSGA2Settings, OptunaSettings
from search.space import BoxSpace

# Per searcher: a misspelt setting and the valid names its error must list (the optuna searcher lists
# `sampler` and the chosen sampler's own arguments).
MISSPELT = {
    "greedy": ("step_size", ["resource", "step", "tiebreak", "moves_per_step"]),
    "nsga2": ("populaton", ["population", "crossover_prob", "eta_crossover", "eta_mutation", "mutation_prob"]),
    "optuna": ("n_startup", ["sampler", "n_startup_trials", "multivariate"]),
    "random": ("population", ["none"]),
    "rl": ("learning_rate", ["lr", "batch", "epochs", "clip", "kl_target", "entropy", "init_std", "reward"]),
    "skopt": ("n_initial", ["n_initial_points", "max_points", "acq_func", "acq_optimizer", "n_points", "rho"]),
}


def test_every_searcher_is_covered():
    assert sorted(MISSPELT) == searcher_names() == sorted(SEARCHERS)


@pytest.mark.parametrize("name", sorted(MISSPELT))
def test_misspelt_setting_lists_the_valid_ones(name):
    bad, valid = MISSPELT[name]
    with pytest.raises(SearchError, match=f"searcher '{name}' has no setting '{bad}'; valid: ") as error:
        check_searcher(name, {bad: 1})
    listed = str(error.value).split("valid: ", 1)[1]
    assert all(re.search(rf"\b{v}\b", listed) for v in valid), listed


@pytest.mark.parametrize("name", sorted(MISSPELT))
def test_valid_list_comes_from_the_settings_declaration(name):
    fields = [f.name for f in dataclasses.fields(SEARCHERS[name].settings_class)]
    if name == "optuna":
        fields = ["sampler"]  # `options` are given flat: the sampler's arguments are listed instead
    with pytest.raises(SearchError) as error:
        check_searcher(name, {"no_such_setting": 1})
    assert all(f in str(error.value) for f in fields)
    check_searcher(name, {})  # the defaults are valid


def test_unknown_name_lists_the_searchers():
    with pytest.raises(SearchError, match="unknown searcher 'nsga3'; valid searchers: greedy, nsga2, optuna"):
        check_searcher("nsga3", {})


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("nsga2", {"population": 3}, r"nsga2 searcher: population must be an integer >= 4 .*got 3"),
        ("nsga2", {"crossover_prob": "high"}, r"crossover_prob must be in \[0, 1\], got 'high'"),
        ("nsga2", {"population": True}, "population must be an integer"),
        ("greedy", {"step": 1.5}, r"step must be in \(0, 1\], got 1.5"),
        ("greedy", {"moves_per_step": 2.5}, "moves_per_step must be a whole number >= 1"),
        ("greedy", {"resource": 3}, "resource must be a name or None, got 3"),
        ("rl", {"batch": 1}, "batch must be >= 2"),
        ("rl", {"lr": float("nan")}, "lr must be > 0, got nan"),
        ("rl", {"reward": "hv"}, "unknown reward 'hv'; valid: chebyshev, hypervolume"),
        ("skopt", {"max_points": 1}, "max_points must be an integer >= 2, got 1"),
        ("skopt", {"acq_optimizer": "adam"}, "unknown acq_optimizer 'adam'; valid: sampling, lbfgs"),
        ("optuna", {"sampler": "cmaes"}, "valid samplers: tpe, gp, nsga2"),
        ("optuna", {"seed": 3}, "do not set 'seed'"),
        ("optuna", {"sampler": "nsga2", "population_size": 1}, "rejected its settings"),
        ("optuna", {"sampler": "gp", "n_ei_candidates": 8}, "has no setting 'n_ei_candidates'.*'gp' sampler's"),
    ],
)
def test_bad_values_are_rejected_before_a_space_exists(name, settings, message):
    with pytest.raises(SearchError, match=message):
        check_searcher(name, settings)


def test_settings_must_be_a_mapping():
    with pytest.raises(SearchError, match="settings must be a mapping"):
        check_searcher("random", ["population"])


def test_settings_records_normalise_and_keep_defaults():
    assert NSGA2Settings.of("nsga2", {"population": 8.0}).population == 8
    assert isinstance(NSGA2Settings.of("nsga2", {"eta_mutation": 5}).eta_mutation, float)
    optuna = OptunaSettings.of("optuna", {"sampler": "tpe", "n_startup_trials": 3})
    assert optuna.options == {"n_startup_trials": 3}
    assert optuna.sampler_kwargs == {"multivariate": True, "n_startup_trials": 3}


def test_make_searcher_uses_the_checked_settings():
    searcher = make_searcher("nsga2", BoxSpace(3), [Objective("a"), Objective("b")], population=8.0)
    assert searcher.settings == NSGA2Settings(population=8)
    with pytest.raises(SearchError, match="takes NSGA2Settings, got OptunaSettings"):
        SEARCHERS["nsga2"](BoxSpace(3), [Objective("a")], settings=OptunaSettings())
