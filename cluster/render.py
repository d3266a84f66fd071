"""Human-facing views of a model graph: the summary table and the block picture."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import networkx as nx
from rich.table import Table

from decomp.coarsen import coarsen, max_depth
from decomp.graph import IO_OPS, ModelGraph

if TYPE_CHECKING:
    from decomp.partition.job import SplitSummary
    from decomp.pruning.job import PruneSummary

__all__ = ["auto_blocks", "block_table", "draw_blocks", "human", "prune_table", "run_table", "split_table"]


def human(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes use binary prefixes."""
    base, prefixes = (1024.0, ["", "Ki", "Mi", "Gi", "Ti"]) if unit == "B" else (1000.0, ["", "K", "M", "G", "T"])
    for prefix in prefixes:
        if abs(value) < base or prefix == prefixes[-1]:
            return f"{value:.0f}{prefix}{unit}" if prefix == "" else f"{value:.2f}{prefix}{unit}"
        value /= base
    return str(value)


def auto_blocks(graph: ModelGraph, at_least: int = 8) -> ModelGraph:
    """The shallowest module-depth coarsening with at least `at_least` compute blocks."""
    deepest = max(max_depth(graph), 1)
    for depth in range(1, deepest + 1):
        blocks = coarsen(graph, depth=depth)
        if len(blocks.compute_nodes()) >= at_least:
            break
    return blocks


def block_table(op_graph: ModelGraph, block_graph: ModelGraph) -> Table:
    totals = op_graph.totals
    table = Table(
        title=f"{op_graph.name}: {len(op_graph)} ops in {len(block_graph)} blocks "
        f"(depth {block_graph.nx.graph['depth']})"
    )
    groups = op_graph.nx.graph.get("groups")
    columns = ["block", "ops", "params", "MACs", "MACs %", "out bytes"] + (["groups"] if groups is not None else [])
    for column in columns:
        table.add_column(column, justify="left" if column == "block" else "right")
    for name in block_graph:
        d = block_graph[name]
        label = f"[dim]{name} ({d['op']})[/]" if d["op"] in IO_OPS else name
        share = f"{100 * d['macs'] / totals.macs:.1f}" if totals.macs else "-"
        row = [label, str(d["n_ops"]), human(d["params"]), human(d["macs"]), share, human(d["out_bytes"], "B")]
        if groups is not None:  # groups whose producer layers sit in this block
            owned = {op_graph[m].get("group") for m in d["members"]} - {None}
            row.append(str(len(owned)) if owned else "")
        table.add_row(*row)
    table.add_section()
    total = ["[bold]total[/]", str(len(op_graph)), human(totals.params), human(totals.macs), "100.0"]
    total.append(f"{human(totals.activation_bytes, 'B')} act.")
    table.add_row(*total, *([str(len(groups))] if groups is not None else []))
    table.caption = f"params {totals.params:,} | MACs {totals.macs:,} | activation bytes {totals.activation_bytes:,}"
    if groups is not None:
        table.caption += f" | prunable groups {len(groups)}"
    return table


def prune_table(summary: PruneSummary) -> Table:
    """Before / after figures of a `decomp prune` job."""
    before, after = summary.before, summary.after
    table = Table(title=f"{summary.request.model}: {summary.request.method} pruning")
    for column in ("", "before", "after", "ratio"):
        table.add_column(column, justify="left" if not column else "right")
    rows = [
        ("params", "params", ""),
        ("MACs", "macs", ""),
        ("nonzero weights", "nonzero_weights", ""),
        ("sparse size", "sparse_bytes", "B"),
    ]
    for label, key, unit in rows:
        b, a = getattr(before, key), getattr(after, key)
        table.add_row(label, human(b, unit), human(a, unit), f"{b / a:.2f}x" if a else "-")
    if before.accuracy is not None:
        drop = 100 * (before.accuracy - after.accuracy)
        table.add_row("accuracy", f"{100 * before.accuracy:.2f}%", f"{100 * after.accuracy:.2f}%", f"{-drop:+.2f} pt")
    table.caption = _left_whole(summary)
    table.caption_justify = "left"
    return table


def _left_whole(summary: PruneSummary, shown: int = 4) -> str | None:
    """What structured pruning left whole: skipped groups one by one, unpruned layers by reason."""
    lines = [f"group {gid} left whole: {why}" for gid, why in summary.skipped.items()]
    by_reason: dict[str, list[str]] = {}
    for layer, why in summary.unpruned.items():
        by_reason.setdefault(why, []).append(layer)
    for why, layers in by_reason.items():
        more = f" (+{len(layers) - shown} more)" if len(layers) > shown else ""
        lines.append(f"not pruned: {', '.join(layers[:shown])}{more}: {why}")
    return "\n".join(lines) or None


def split_table(summary: SplitSummary) -> Table:
    """Per-part figures of a `decomp split` job."""
    metrics, request = summary.metrics, summary.request
    table = Table(title=f"{request.model or request.pruned}: {len(metrics.parts)} parts ({request.mode})")
    columns = ["part", "ops", "params", "MACs", "MACs %", "peak act.", "in bytes/sample"]
    stage = summary.stage_seconds
    if stage:
        columns.append("est. stage ms")
    for column in columns:
        table.add_column(column, justify="left" if column == "part" else "right")
    total = sum(p.macs for p in metrics.parts) or 1
    for k, part in enumerate(metrics.parts):
        row = [
            str(part.part),
            str(part.nodes),
            human(part.params),
            human(part.macs),
            f"{100 * part.macs / total:.1f}",
            human(part.peak_bytes, "B"),
            human(part.received_bytes / metrics.batch, "B"),
        ]
        if stage:
            row.append(f"{1000 * stage[k]:.2f}")
        table.add_row(*row)
    table.caption = (
        f"balance {metrics.balance:.2f} | bytes between parts per sample "
        f"{human(metrics.comm_bytes_per_sample, 'B')} | export parts {summary.parts_in_export}"
    )
    runs = summary.tuning_runs
    if runs:  # in the order they ran
        table.caption += "\nran (ms per call of each stage): " + "; ".join(
            f"cuts {','.join(map(str, r.cuts))}: "
            + " + ".join(f"{1000 * s:.1f}" for s in r.stage_seconds)
            + (" (kept)" if r.kept else "")
            for r in runs
        )
    return table


def run_table(report) -> Table:
    """Throughput, latency and per-part busy time of `decomp run`."""
    table = Table(
        title=f"{report.runner}: {report.parts} parts"
        + (f" x {report.replicas} replicas" if report.replicas > 1 else "")
        + f", {report.batches} batches of {report.batch_size} "
        f"in {report.micro_batches} micro-batches"
    )
    for column in ("", "value", "where"):
        table.add_column(column, justify="right" if column == "value" else "left")
    table.add_row("throughput", f"{report.throughput:.2f} samples/s", "")
    table.add_row("latency per batch (median)", f"{1000 * report.latency_median_s:.1f} ms", "")
    table.add_row("latency per batch (max)", f"{1000 * report.latency_max_s:.1f} ms", "")
    for i, (busy, share) in enumerate(zip(report.busy_s, report.busy_share, strict=True)):
        replica, k = divmod(i, report.parts)
        where = ""
        if report.devices:
            node = f" of node {report.nodes[i]}" if report.nodes and report.nodes[i] else ""
            where = f"{report.devices[i]}{node}, outputs by {report.transports[k]}"
        label = f"replica {replica} part {k}" if report.replicas > 1 else f"part {k}"
        table.add_row(f"{label} busy", f"{busy:.3f} s ({100 * share:.0f}%)", where)
        sent = report.bytes_out[i] if i < len(report.bytes_out) else 0
        if sent:
            table.add_row(f"{label} sends", f"{sent / 1024:.1f} KiB per sample", "through the object store")
    return table


def draw_blocks(graph: ModelGraph, path: str | Path) -> None:
    """Draw the block graph left to right by topological generation, node size by MACs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = graph.nx.copy()
    generations = list(nx.topological_generations(g))
    for layer, nodes in enumerate(generations):
        for n in nodes:
            g.nodes[n]["layer"] = layer
    pos = nx.multipartite_layout(g, subset_key="layer")
    top = max((d["macs"] for _, d in g.nodes(data=True)), default=0) or 1
    sizes = [200 + 1000 * d["macs"] / top for _, d in g.nodes(data=True)]
    width = max(8.0, 0.9 * len(generations))
    height = max(3.0, 1.2 * max(len(nodes) for nodes in generations))
    fig, ax = plt.subplots(figsize=(width, height))
    nx.draw_networkx(g, pos, ax=ax, node_size=sizes, font_size=7, node_color="#9ecae1", arrowsize=8)
    ax.set_title(f"{graph.name}: blocks (size ~ MACs)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
