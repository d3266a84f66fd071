"""The searchers by name: register one, check a name and its settings, build one.

`search.searchers` holds the built-in searchers, one module each, and each registers itself with
`register`; the functions here import that package first, so every built-in name is known. A job file's
`searcher: {name, seed, settings}` is checked with `check_searcher` when it is read (no space needed),
and built with `make_searcher` once the space and objectives are known.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from decomp.errors import SearchError
from search.base import Searcher
from search.records import Constraint, Objective
from search.settings import Settings
from search.space import Space

__all__ = ["SEARCHERS", "check_searcher", "make_searcher", "register", "searcher_names"]

SEARCHERS: dict[str, type[Searcher]] = {}


def register(cls: type[Searcher]) -> type[Searcher]:
    """Class decorator: make a searcher available by its `name`."""
    if not cls.name:
        raise SearchError(f"searcher class {cls.__qualname__} has no name; set the class attribute `name`")
    SEARCHERS[cls.name] = cls
    return cls


def searcher_names() -> list[str]:
    """Every registered searcher's name, built-in ones included."""
    _load_builtin()
    return sorted(SEARCHERS)


def check_searcher(name: str, settings: Mapping[str, Any]) -> None:
    """Check a searcher's name and settings without building it: an unknown name is an error listing the
    valid names, an unknown or bad setting one that lists the searcher's valid settings."""
    _settings(name, settings)


def make_searcher(
    name: str,
    space: Space,
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint] = (),
    seed: int = 0,
    **settings: Any,
) -> Searcher:
    """The searcher called `name` over `space`, with `settings` (checked as `check_searcher` does)."""
    checked = _settings(name, settings)
    return SEARCHERS[name](space, objectives, constraints, seed=seed, settings=checked)


def _settings(name: str, settings: Mapping[str, Any]) -> Settings:
    _load_builtin()
    if name not in SEARCHERS:
        raise SearchError(f"unknown searcher {name!r}; valid searchers: {', '.join(sorted(SEARCHERS))}")
    if not isinstance(settings, Mapping):
        raise SearchError(f"searcher {name!r}: settings must be a mapping of name to value, got {settings!r}")
    return SEARCHERS[name].settings_class.of(name, settings)


def _load_builtin() -> None:
    importlib.import_module("search.searchers")  # each module registers its searcher
