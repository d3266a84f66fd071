"""The text form shared by model and data specs: `form?key=value&key=value`, and `python:` factories."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from decomp.errors import SpecError

__all__ = ["parse_options", "format_options", "import_factory"]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(query: str, text: str, what: str) -> tuple[tuple[str, Any], ...]:
    """`a=1&b=x` -> (('a', 1), ('b', 'x')); values read as JSON literals where they parse."""
    options: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SpecError(f"bad option {item!r} in {what} {text!r}; write options as ?key=value&key=value")
        if key in options:
            raise SpecError(f"option {key!r} given twice in {what} {text!r}")
        options[key] = _value(value)
    return tuple(options.items())


def format_options(options: tuple[tuple[str, Any], ...]) -> str:
    """The `?key=value&...` suffix of a spec ('' without options)."""
    if not options:
        return ""
    return "?" + "&".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in options)


def import_factory(module: str, name: str, what: str) -> Callable:
    """Import `module.name`, looking in the current folder too (as `python -m` does)."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise SpecError(f"cannot import {name!r} from {module!r} for {what}: {err}") from None
