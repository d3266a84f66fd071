"""Write a benchmark's figures into its own section (between marker comments) of BENCHMARKS.md at full size,
or of a smoke file at smoke size: smoke figures are not the ones BENCHMARKS.md reports, but a smoke run still
proves every figure is produced."""

from __future__ import annotations

import platform
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from functools import cache
from pathlib import Path

import torch

from tests.benchmarks import size

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"
_BAD_FIGURE = re.compile(r"\b(nan|inf)\b", re.I)
_SMOKE_HEADER = (
    "# Benchmarks at smoke size\n\nEach mechanism end to end at a small size; not the figures BENCHMARKS.md "
    "reports (those: `pytest -m benchmark --benchmark-size full`).\n"
)
_smoke_file: Path | None = None


@contextmanager
def smoke_file(path: Path) -> Iterator[Path]:
    """Within the block, `record` at smoke size writes to `path` (the benchmarks' conftest sets one per session)."""
    global _smoke_file
    before, _smoke_file = _smoke_file, path
    try:
        yield path
    finally:
        _smoke_file = before


def record(name: str, lines: list[str]) -> Path:
    """Replace (or append) the section `name` with `lines` and a line saying where and at which commit it was
    measured, in BENCHMARKS.md at full size and in the smoke file at smoke size; the file written."""
    _check_figures(name, lines)
    if size.is_full():
        path, label, header = BENCHMARKS, "measured", "# Benchmarks\n"
    elif _smoke_file is None:
        raise RuntimeError("record() at smoke size writes to the session's smoke file; none is set (see smoke_file)")
    else:
        path, label, header = _smoke_file, "smoke size, measured", _SMOKE_HEADER
    threads = torch.get_num_threads()
    commit = _commit()
    at = f" at commit {commit}" if commit else ""
    where = f"_{label} {date.today()}{at} on {platform.machine()}, {threads} torch threads, torch {torch.__version__}_"
    body = "\n".join([f"<!-- bench:{name} -->", *lines, "", where, f"<!-- /bench:{name} -->"])
    text = path.read_text() if path.exists() else header
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    path.write_text(text)
    assert body in path.read_text(), f"section {name} not found in {path} after writing it"
    return path


def _check_figures(name: str, lines: list[str]) -> None:
    """A section has a heading and figures, none of them NaN or infinite."""
    if not lines or not lines[0].startswith("#"):
        raise AssertionError(f"benchmark section {name} must start with a heading, got {lines[:1]}")
    if not any(re.search(r"\d", line) for line in lines[1:]):
        raise AssertionError(f"benchmark section {name} has no figures: {lines}")
    bad = [line for line in lines if _BAD_FIGURE.search(line)]
    if bad:
        raise AssertionError(f"benchmark section {name} has NaN or infinite figures: {bad}")


@cache
def _commit() -> str | None:
    """The short commit of HEAD, with ' + changes' when the tree differs from it (BENCHMARKS.md aside: the
    benchmarks rewrite it); None without git or outside a repository."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", ".", f":(exclude){BENCHMARKS.name}").strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + (" + changes" if dirty else "")
