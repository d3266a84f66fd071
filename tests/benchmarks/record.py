"""Write a benchmark's figures into its own section of BENCHMARKS.md (between marker comments)."""

from __future__ import annotations

import platform
import re
from datetime import date
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "BENCHMARKS.md"


def record(name: str, lines: list[str]) -> None:
    """Replace (or append) the section `name` with `lines` and a line saying where it was measured."""
    threads = torch.get_num_threads()
    where = f"_measured {date.today()} on {platform.machine()}, {threads} torch threads, torch {torch.__version__}_"
    body = "\n".join([f"<!-- bench:{name} -->", *lines, "", where, f"<!-- /bench:{name} -->"])
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    BENCHMARKS.write_text(text)
