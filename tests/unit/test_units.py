"""Quantities as the review and the search show them (`cluster.units`): compact units for tables, per-sample
values of what a run costs per micro-batch, and the search's best-per-objective lines that say they come from
different candidates."""

import math

import pytest
from rich.console import Console

from cluster.cli_search import BEST, _summary_table
from cluster.driver import SearchSummary
from cluster.units import format_value, label, per_sample, short_name, unit_scale


@pytest.mark.parametrize(
    ("name", "value", "plain", "compact"),
    [
        ("accuracy", 0.8150, "81.50%", "81.50%"),
        ("test_accuracy", 0.79, "79.00%", "79.00%"),
        ("macs", 374_500.0, "374.50K", "374.50K"),
        ("comm_bytes", 3136.0, "3.06KiB", "3.06KiB"),
        ("latency_s", 0.003168, "3.17 ms", "3.17ms"),
        ("throughput", 80_790.7, "8.079e+04 samples/s", "80.79K/s"),
        ("params", 106_040.0, "106.04K", "106.04K"),
        ("macs", math.inf, "inf", "inf"),
    ],
)
def test_values_in_their_units(name, value, plain, compact):
    assert format_value(name, value) == plain
    assert format_value(name, value, compact=True) == compact


def test_what_is_costed_per_micro_batch_is_shown_per_sample():
    assert per_sample("macs", 6400.0, 64) == 100.0 and per_sample("comm_bytes", 640.0, 64) == 10.0
    assert per_sample("latency_s", 0.5, 64) == 0.5 and per_sample("peak_memory", 2.0**20, 64) == 2.0**20
    assert label("macs") == "macs/sample" and label("macs", short=True) == "MACs/sample"
    assert label("latency_s") == "latency_s" and short_name("accuracy") == "val acc"
    assert unit_scale("macs", [374_500.0], label("macs")) == (1e-3, "macs/sample (K)")
    assert unit_scale("latency_s", [0.003]) == (1e3, "latency_s (ms)")


def summary(best: dict[str, float]) -> SearchSummary:
    return SearchSummary("runs/x", "x", 12, 0, best, 0.5, 3.0, "evaluations", False, 0, 0, 0, 0.1)


def test_the_search_summary_says_each_best_comes_from_its_own_candidate():
    console = Console(width=80, record=True)
    console.print(_summary_table(summary({"accuracy": 0.8672, "macs": 16_496_000.0, "latency_s": 0.00317}), 64))
    output = console.export_text()
    text = " ".join(output.replace("│", " ").split())  # one line per row, cells apart
    assert f"{BEST}: no one candidate need have them all" in text
    assert "best accuracy 86.72%" in text and "best macs/sample 257.75K" in text and "best latency_s 3.17 ms" in text
    assert max(len(line) for line in output.splitlines()) <= 80
    console = Console(width=80, record=True)
    console.print(_summary_table(summary({}), 64))  # nothing feasible yet: no best rows, no caption
    assert "best" not in console.export_text()
