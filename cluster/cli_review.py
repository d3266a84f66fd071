"""`decomp pareto`, `decomp dashboard` and `decomp export`: reviewing a search run (logic in `cluster.review`).

Pictures are matplotlib figures: a `.png` path gets the figure, a `.html` path a self-contained page with the
figure embedded (a base64 PNG) and the tables beside it, so it opens offline and can be mailed as one file.
"""

from __future__ import annotations

import base64
import html
import io
import ipaddress
import math
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Annotated, Optional

import networkx as nx
import numpy as np
import typer
from rich.table import Table

from cluster import review as rv
from cluster.cli_app import JsonOut, app, console, write_json
from cluster.units import format_value, unit_scale
from decomp.coarsen import coarsen
from decomp.errors import SpecError

__all__ = ["dashboard", "export_command", "pareto"]

PICTURES = (".png", ".html")
Tab = tuple[str, list[str], list[list[str]]]  # title, columns, rows


# -- commands ---------------------------------------------------------------------------------------
@app.command()
def pareto(
    run: Annotated[Path, typer.Argument(help="a run folder written by decomp search, e.g. runs/quickstart")],
    json_path: JsonOut = None,
    plot: Annotated[
        Optional[Path], typer.Option(help="picture: the front and hypervolume (or the candidate's partition)")
    ] = None,
    candidate: Annotated[
        Optional[int], typer.Option(help="show this candidate: keep ratios per group and its partition")
    ] = None,
) -> None:
    """The non-dominated feasible candidates of RUN and the hypervolume over trials; or one candidate."""
    if plot is not None and plot.suffix.lower() not in PICTURES:
        raise SpecError(f"--plot writes {' or '.join(PICTURES)}, got {plot.name!r}; e.g. --plot front.png")
    review = rv.review_run(run)
    if candidate is None:
        tables, data = _front_tables(review), rv.review_json(review)
    else:
        with console.status(f"reading candidate {candidate} against {review.config.model} ..."):
            view = rv.candidate_view(review, candidate)
        tables, data = _candidate_tables(review, view), rv.candidate_json(review, view)
    for title, columns, rows in tables:
        console.print(_rich(title, columns, rows))
    if candidate is None:
        counts = review.counts()
        final = review.hypervolume[-1][1] if review.hypervolume else 0.0
        console.print(
            f"{counts['trials']} trials: {counts['complete']} complete, {counts['failed']} failed, "
            f"{counts['infeasible']} infeasible; {counts['front']} on the front; hypervolume {final:.6g} "
            f"(normaliser: {review.normalizer_source})"
        )
    write_json(json_path, data)
    if plot is not None:
        figure = front_figure(review) if candidate is None else partition_figure(view)
        title = f"{review.study_name}: " + ("Pareto front" if candidate is None else f"candidate {candidate}")
        write_picture(figure, plot, title, tables)
        console.print(f"wrote {plot}")
    elif candidate is not None:
        console.print(f"[dim]add --plot candidate_{candidate}.png for a picture of its partition[/]")


@app.command()
def dashboard(
    run: Annotated[Path, typer.Argument(help="a run folder written by decomp search")],
    host: Annotated[str, typer.Option(help="address to listen on (others can edit the study: keep it local)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
) -> None:
    """Serve optuna-dashboard on RUN's study storage until Ctrl-C."""
    wsgi_app = rv.dashboard_app(run)
    if not _loopback(host):
        console.print(
            f"[yellow]warning:[/] listening on {host}: anyone who reaches it can rename, edit or delete the study"
        )
    console.print(f"optuna-dashboard for {run} at http://{host}:{port}/ (Ctrl-C to stop)")
    rv.serve(wsgi_app, host, port)


@app.command("export")
def export_command(
    run: Annotated[Path, typer.Argument(help="a run folder written by decomp search")],
    candidate: Annotated[int, typer.Option(help="the candidate id to export (see decomp pareto RUN)")],
    out: Annotated[Path, typer.Option(help="export folder to write (must not exist or be empty)")],
    overwrite: Annotated[bool, typer.Option(help="replace an existing export folder")] = False,
    json_path: JsonOut = None,
) -> None:
    """Prune, split, export and verify candidate ID of RUN, ready for `decomp run OUT`."""
    with console.status(f"exporting candidate {candidate} of {run} ..."):
        summary = rv.export_candidate(run, candidate, out, overwrite=overwrite)
    table = Table(title=f"candidate {candidate} (trial {summary['trial']}): {summary['parts']} parts")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("params", f"{summary['params_before']:,} -> {summary['params_after']:,}")
    for name, value in summary["values"].items():
        table.add_row(name, format_value(name, value))
    for name, value in summary["metrics"].items():
        if name.startswith("test_"):
            table.add_row(f"{name} (report)", format_value(name.removeprefix("test_"), value))
    if summary["level"]:
        table.add_row("measured at", f"{summary['level']} (its weights are in the export)")
    console.print(table)
    console.print(f"wrote {summary['out']} (verified: max abs diff {summary['max_abs_diff']:.3g}); run it with")
    console.print(f"  decomp run {summary['out']} --local")
    if not summary["feasible"]:
        console.print(f"[yellow]note:[/] candidate {candidate} breaks a constraint of the run (see decomp pareto)")
    write_json(json_path, summary)


@app.command("eval")
def eval_command(
    export: Annotated[Path, typer.Argument(help="an export folder written by decomp export or decomp split")],
    data: Annotated[
        Optional[str], typer.Option(help="data spec as a job gives it (default: the data its run measured on)")
    ] = None,
    split: Annotated[str, typer.Option(help="test (what the search reported), validation or train")] = "test",
    local: Annotated[bool, typer.Option(help="run the parts in this process instead of Ray actors")] = False,
    batch_size: Annotated[int, typer.Option(help="samples per batch (fixed-batch exports use their own)")] = 128,
    threads: Annotated[int, typer.Option(help="torch threads per part")] = 1,
    validation: Annotated[
        Optional[float], typer.Option(help="share carved for validation (default: its run's accuracy.validation)")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed that carves it (default: its run's searcher.seed)")] = None,
    max_samples: Annotated[
        Optional[int], typer.Option(help="score the first N samples (default: its run's accuracy.max_samples)")
    ] = None,
    json_path: JsonOut = None,
) -> None:
    """Run EXPORT on real data and report its accuracy beside the figure the search recorded for it."""
    from cluster.scoring import score_export

    where = "in this process" if local else "on Ray"
    with console.status(f"evaluating {export} ({split} split) {where} ..."):
        score = score_export(export, data, split, local, batch_size, threads, validation, seed, max_samples)
    table = Table(title=f"{export} on {score.data} ({split} split, {score.samples} samples, {score.runner})")
    table.add_column("")
    table.add_column("accuracy", justify="right")
    table.add_row("measured now", format_value("accuracy", score.accuracy))
    if score.recorded is not None:
        level = f" ({score.level})" if score.level else ""
        table.add_row(f"recorded by the search{level}", format_value("accuracy", score.recorded))
        table.add_row("difference (points)", f"{100 * score.difference:+.2f}")
    console.print(table)
    write_json(json_path, score.to_json())


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- tables -----------------------------------------------------------------------------------------
def _rich(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for k, column in enumerate(columns):
        table.add_column(column, justify="left" if k == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _front_tables(review: rv.Review) -> list[Tab]:
    columns, rows = rv.front_rows(review)
    front = (f"{review.study_name}: Pareto front ({len(rows)} non-dominated feasible candidates)", columns, rows)
    return [front, ("hypervolume over trials (where it rose)", ["trial", "hypervolume"], _milestones(review))]


def _milestones(review: rv.Review, limit: int = 10) -> list[list[str]]:
    """The trials where the hypervolume rose, thinned to at most `limit` rows (the last always kept)."""
    rises, last = [], 0.0
    for trial, value in review.hypervolume:
        if value > last:
            rises.append((trial, value))
            last = value
    if len(rises) > limit:
        picks = {round(i * (len(rises) - 1) / (limit - 1)) for i in range(limit)}
        rises = [r for i, r in enumerate(rises) if i in picks]
    return [[str(t), f"{v:.6g}"] for t, v in rises]


def _candidate_tables(review: rv.Review, view: rv.CandidateView) -> list[Tab]:
    row, e = view.row, view.row.evaluation
    place = "on the front" if view.on_front else ("feasible, dominated" if row.feasible else "not on the front")
    summary = [
        ["trial", str(row.trial)],
        ["searcher", row.candidate.searcher],
        ["state", e.state + ("" if e.ok else f": {e.message}")],
        ["front", place],
    ]
    for o, v in zip(review.objectives, e.values, strict=False):
        summary.append([f"{o.name} ({'max' if o.direction == 'maximize' else 'min'})", format_value(o.name, v)])
    for c, v in zip(review.constraints, e.constraints, strict=False):
        status = "ok" if c.violation(v) == 0 else f"violated by {format_value(c.name, c.violation(v))}"
        summary.append([f"{c.name} {c.sense} {format_value(c.name, c.bound)}", f"{format_value(c.name, v)} {status}"])
    groups = [
        [
            g["group"],
            g["kind"],
            str(g["channels"]),
            "indices" if g["asked"] is None else f"{g['asked']:.3g}",
            str(g["kept"]),
            f"{g['keep_ratio']:.3f}",
        ]
        for g in view.groups
    ]
    tabs: list[Tab] = [
        (f"candidate {row.candidate.id}", ["", "value"], summary),
        ("keep ratio per coupling group", ["group", "kind", "channels", "asked", "kept", "keep ratio"], groups),
    ]
    if view.layers:
        layers = [[s["layer"], _sparsity(s["sparsity"]), s["pattern"] or "-"] for s in view.layers]
        tabs.append(("sparsity per layer", ["layer", "sparsity", "N:M"], layers))
    parts = [
        [str(p["part"]), str(p["ops"]), format_value("macs", p["macs"]), f"{100 * p['macs_share']:.1f}"]
        for p in view.parts
    ]
    tabs.append((f"partition ({view.plan.mode})", ["part", "ops", "MACs (pruned)", "MACs %"], parts))
    return tabs


def _sparsity(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


# -- pictures ---------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def front_figure(review: rv.Review):
    """The front against every complete trial: 2-D for two objectives, 3-D for three, every pair for more
    (values against trial number for one), plus the hypervolume over trials."""
    plt = _pyplot()
    m = len(review.objectives)
    complete = [r for r in review.rows if r.evaluation.ok]
    on_front = {r.trial for r in review.front}
    groups = {
        "dominated": ([r for r in review.rows if r.feasible and r.trial not in on_front], "#9ecae1", "o"),
        "infeasible": ([r for r in complete if not r.feasible], "#fc9272", "x"),
        "front": (review.front, "#08519c", "o"),
    }
    scales = [unit_scale(o.name, [r.evaluation.values[i] for r in complete]) for i, o in enumerate(review.objectives)]
    panels: list = ["trial"] if m == 1 else ["3d"] if m == 3 else list(combinations(range(m), 2))
    cols = min(len(panels) + 1, 3)
    rows = math.ceil((len(panels) + 1) / cols)
    fig = plt.figure(figsize=(5.2 * cols, 4.4 * rows))

    def values(chosen, i):
        return np.array([r.evaluation.values[i] for r in chosen]) * scales[i][0]

    for k, panel in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1, projection="3d" if panel == "3d" else None)
        for label, (chosen, colour, marker) in groups.items():
            if not chosen:
                continue
            if panel == "trial":
                ax.scatter([r.trial for r in chosen], values(chosen, 0), c=colour, marker=marker, label=label)
            elif panel == "3d":
                ax.scatter(*(values(chosen, i) for i in range(3)), c=colour, marker=marker, label=label)
            else:
                ax.scatter(values(chosen, panel[0]), values(chosen, panel[1]), c=colour, marker=marker, label=label)
        if panel == "trial":
            ax.set_xlabel("trial")
            ax.set_ylabel(scales[0][1])
        elif panel == "3d":
            ax.set_xlabel(scales[0][1])
            ax.set_ylabel(scales[1][1])
            ax.set_zlabel(scales[2][1])
        else:
            ax.set_xlabel(scales[panel[0]][1])
            ax.set_ylabel(scales[panel[1]][1])
            if len(review.front) <= 20:
                for r in review.front:
                    x, y = (r.evaluation.values[i] * scales[i][0] for i in panel)
                    ax.annotate(str(r.candidate.id), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if k == 0:
            ax.legend(fontsize=8)
    ax = fig.add_subplot(rows, cols, len(panels) + 1)
    if review.hypervolume:
        trials, volumes = zip(*review.hypervolume, strict=True)
        ax.step(trials, volumes, where="post", color="#08519c")
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume")
    ax.set_title(f"normaliser: {review.normalizer_source}", fontsize=8)
    counts = review.counts()
    fig.suptitle(f"{review.study_name}: {counts['front']} non-dominated of {counts['complete']} complete trials")
    fig.tight_layout()
    return fig


def partition_figure(view: rv.CandidateView, max_ops: int = 40):
    """The run's model graph coloured by the candidate's parts: every op for small graphs, else blocks of ops
    (a block whose ops lie in several parts takes its majority colour, outlined and labelled with its parts)."""
    plt = _pyplot()
    graph, part = view.graph, view.plan.part_of()
    if len(graph.compute_nodes()) <= max_ops:
        g = graph.nx.copy()
        parts_of = {n: Counter([part[n]]) if n in part else Counter() for n in g}
    else:
        blocks = coarsen(graph, blocks=max_ops // 2)
        g = blocks.nx.copy()
        parts_of = {b: Counter(part[m] for m in blocks[b].get("members", ()) if m in part) for b in g}
    for layer, nodes in enumerate(nx.topological_generations(g)):
        for n in nodes:
            g.nodes[n]["layer"] = layer
    pos = nx.multipartite_layout(g, subset_key="layer")
    palette = plt.get_cmap("tab10")
    colours, edges, labels = [], [], {}
    for n in g:
        counts = parts_of[n]
        colours.append(palette(counts.most_common(1)[0][0] % 10) if counts else "#d9d9d9")
        edges.append("black" if len(counts) > 1 else "none")
        labels[n] = f"{n}\n(parts {','.join(map(str, sorted(counts)))})" if len(counts) > 1 else n
    generations = max(nx.get_node_attributes(g, "layer").values(), default=0) + 1
    widest = max(Counter(nx.get_node_attributes(g, "layer").values()).values(), default=1)
    fig, ax = plt.subplots(figsize=(min(max(8.0, 0.9 * generations), 24.0), max(3.0, 1.2 * widest)))
    nx.draw_networkx_edges(g, pos, ax=ax, arrowsize=8, edge_color="#888888")
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colours, edgecolors=edges, linewidths=2, node_size=420)
    nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=6)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=palette(p["part"] % 10), label=f"part {p['part']}: {p['ops']} ops")
        for p in view.parts
    ]
    ax.legend(handles=handles, fontsize=8, loc="best")
    row = view.row
    ax.set_title(f"candidate {row.candidate.id} (trial {row.trial}): {view.plan.parts} parts, {view.plan.mode}")
    ax.axis("off")
    fig.tight_layout()
    return fig


def write_picture(fig, path: Path, title: str, tables: list[Tab]) -> None:
    """Save `fig` as a PNG, or as a self-contained HTML page holding the figure and `tables`."""
    plt = _pyplot()
    try:
        if path.suffix.lower() == ".png":
            fig.savefig(path, dpi=120)
            return
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
    finally:
        plt.close(fig)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    path.write_text(_page(title, image, tables), encoding="utf-8")


def _page(title: str, png_base64: str, tables: list[Tab]) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>", f'<img alt="{esc(title)}" src="data:image/png;base64,{png_base64}">']
    for caption, columns, rows in tables:
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        cells = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in rows)
        body.append(f"<table><caption>{esc(caption)}</caption><tr>{head}</tr>{cells}</table>")
    style = (
        "body{font-family:sans-serif;margin:2em}img{max-width:100%}table{border-collapse:collapse;margin:1.5em 0}"
        "caption{font-weight:bold;text-align:left;padding:.3em 0}td,th{border:1px solid #ccc;padding:.2em .6em;"
        "text-align:right}td:first-child,th:first-child{text-align:left}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{esc(title)}</title><style>{style}</style>'
        f"</head><body>{''.join(body)}</body></html>\n"
    )
