"""Searcher settings: each searcher declares its settings once, as a frozen dataclass.

A searcher's `settings_class` is a subclass of `Settings` whose fields are the settings a job file may
give (`searcher: {name, seed, settings: {...}}`) and whose defaults are the searcher's; `__post_init__`
checks the values and states the rule a bad one breaks. `Settings.of(searcher, mapping)` reads a plain
mapping, and its error for an unknown name lists the valid ones from the same declaration, so the
registry can check a job file's settings before any space exists (`search.registry.check_searcher`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from numbers import Real
from typing import Any, TypeVar

from decomp.errors import SearchError

__all__ = ["Settings", "check_choice", "check_number", "unknown_settings"]

S = TypeVar("S", bound="Settings")


@dataclass(frozen=True)
class Settings:
    """A searcher without settings; subclasses add fields (with defaults) and check them in `__post_init__`."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls: type[S], searcher: str, values: Mapping[str, Any]) -> S:
        """The settings record for `values`; an unknown name is an error listing the valid ones."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise unknown_settings(searcher, unknown, ", ".join(cls.names()))
        return cls(**values)

    def _set(self, **values: Any) -> None:
        """Store checked values (an int for a whole-number setting given as 4.0, say) on the frozen record."""
        for name, value in values.items():
            object.__setattr__(self, name, value)


def unknown_settings(searcher: str, unknown: Sequence[str], valid: str) -> SearchError:
    """The error for settings a searcher does not have, listing `valid` (empty: it takes none)."""
    s = "s" if len(unknown) > 1 else ""
    fix = f"{valid} (spell a setting as listed, or leave it out for its default)" if valid else "none (leave them out)"
    return SearchError(f"searcher {searcher!r} has no setting{s} {', '.join(map(repr, unknown))}; valid: {fix}")


def check_number(
    searcher: str,
    name: str,
    value: Any,
    rule: str,
    holds: Callable[[float], bool],
    integer: bool = False,
    optional: bool = False,
) -> Any:
    """`value` (an int when `integer`) if it is a finite number for which `holds` is true, or None when the
    setting is `optional`; otherwise an error "<searcher> searcher: <name> must be <rule>, got <value>"."""
    if value is None and optional:
        return None
    number = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (integer and value != int(value)) or not holds(value):
        raise SearchError(f"{searcher} searcher: {name} must be {rule}, got {value!r}")
    return int(value) if integer else float(value)


def check_choice(searcher: str, name: str, value: Any, choices: Collection[str]) -> str:
    """`value` if it is one of `choices`; otherwise an error that lists them."""
    if value not in choices:
        raise SearchError(f"{searcher} searcher: unknown {name} {value!r}; valid: {', '.join(choices)}")
    return value
