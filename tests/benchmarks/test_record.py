"""The benchmark machinery itself (no benchmark, so in the default run): sizes follow --benchmark-size's
variable, and `record` writes full-size sections to BENCHMARKS.md and smoke-size ones elsewhere."""

import re
import shutil
import subprocess

import pytest

from tests.benchmarks import record, size

LINES = ["## A benchmark", "", "| figure | value |", "|---|---|", "| ratio | **1.23** |"]


@pytest.fixture
def benchmarks_md(tmp_path, monkeypatch):
    """A stand-in BENCHMARKS.md with two sections."""
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(
        "# Benchmarks\n\nHeader.\n\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\n\n"
        "<!-- bench:b -->\nold b\n<!-- /bench:b -->\n"
    )
    monkeypatch.setattr(record, "BENCHMARKS", path)
    return path


def test_pick_follows_the_size_variable(monkeypatch):
    monkeypatch.setenv(size.ENV, "full")
    assert size.pick(full=9, smoke=2) == 9 and size.is_full()
    monkeypatch.setenv(size.ENV, "smoke")
    assert size.pick(full=9, smoke=2) == 2 and not size.is_full()
    monkeypatch.delenv(size.ENV)
    assert size.current() == "smoke"
    monkeypatch.setenv(size.ENV, "huge")
    with pytest.raises(ValueError, match="must be one of smoke, full, got 'huge'"):
        size.pick(full=9, smoke=2)


def test_full_size_rewrites_its_section_of_benchmarks_md(benchmarks_md, monkeypatch):
    monkeypatch.setenv(size.ENV, "full")
    assert record.record("a", LINES) == benchmarks_md
    text = benchmarks_md.read_text()
    assert "old a" not in text and "old b" in text and text.startswith("# Benchmarks\n\nHeader.")
    section = re.search(r"<!-- bench:a -->\n(.*)<!-- /bench:a -->", text, re.S).group(1)
    assert section.startswith("\n".join(LINES))
    assert re.search(r"^_measured \d{4}-\d\d-\d\d .*torch threads, torch .*_$", section, re.M), section
    record.record("c", LINES)  # a new section is appended
    assert benchmarks_md.read_text().rstrip().endswith("<!-- /bench:c -->")


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_the_measured_line_names_the_commit(benchmarks_md, monkeypatch):
    monkeypatch.setenv(size.ENV, "full")
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=record.ROOT, capture_output=True, text=True
    ).stdout.strip()
    if not head:
        pytest.skip("not in a git checkout")
    record.record("a", LINES)
    assert re.search(rf"_measured \S+ at commit {head}( \+ changes)? on ", benchmarks_md.read_text())


def test_smoke_size_leaves_benchmarks_md_alone(benchmarks_md, tmp_path, monkeypatch):
    monkeypatch.setenv(size.ENV, "smoke")
    before = benchmarks_md.read_text()
    with record.smoke_file(tmp_path / "smoke.md") as smoke:
        assert record.record("a", LINES) == smoke
    assert benchmarks_md.read_text() == before
    text = smoke.read_text()
    assert text.startswith("# Benchmarks at smoke size") and "\n".join(LINES) in text
    assert "_smoke size, measured " in text


def test_smoke_size_needs_a_smoke_file(benchmarks_md, monkeypatch):
    monkeypatch.setenv(size.ENV, "smoke")
    monkeypatch.setattr(record, "_smoke_file", None)
    with pytest.raises(RuntimeError, match="smoke file"):
        record.record("a", LINES)


@pytest.mark.parametrize(
    "lines, problem",
    [
        ([], "must start with a heading"),
        (["no heading", "| 1 |"], "must start with a heading"),
        (["## heading", "", "no figures here"], "has no figures"),
        (["## heading", "| ratio 2 / 1 | nan |"], "NaN or infinite"),
        (["## heading", "| evaluations / s, 2 evaluators | inf |"], "NaN or infinite"),
    ],
)
def test_a_section_without_finite_figures_is_refused(benchmarks_md, monkeypatch, lines, problem):
    monkeypatch.setenv(size.ENV, "full")
    before = benchmarks_md.read_text()
    with pytest.raises(AssertionError, match=problem):
        record.record("a", lines)
    assert benchmarks_md.read_text() == before
