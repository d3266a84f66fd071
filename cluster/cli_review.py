"""`decomp pareto`, `decomp dashboard`, `decomp export` and `decomp eval`: reviewing a search run (logic in
`cluster.review`, pictures in `cluster.figures`). `--plot` takes a `.png` path (the figure) or a `.html` path
(a self-contained page: the figure and the tables beside it)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from cluster import dashboard as dash
from cluster import review as rv
from cluster.candidate_view import CandidateView, candidate_json, candidate_view
from cluster.cli_app import JsonOut, app, console, write_json
from cluster.export import export_candidate
from cluster.figures import Tab, front_figure, partition_figure, write_picture
from cluster.units import PER_BATCH, format_value, label, per_sample
from decomp.errors import SpecError

__all__ = ["dashboard", "export_command", "pareto"]

PICTURES = (".png", ".html")


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
            view = candidate_view(review, candidate)
        tables, data = _candidate_tables(review, view), candidate_json(review, view)
    for tab in tables:
        console.print(_rich(tab))
    if candidate is None:
        counts = review.counts()
        final = review.hypervolume[-1][1] if review.hypervolume else 0.0
        console.print(
            f"{counts['trials']} trials: {counts['complete']} complete, {counts['failed']} failed, "
            f"{counts['infeasible']} infeasible; {counts['front']} on the front\n"
            f"hypervolume {final:.6g} (normaliser: {review.normalizer_source})"
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
    wsgi_app = dash.dashboard_app(run)
    if not _loopback(host):
        console.print(
            f"[yellow]warning:[/] listening on {host}: anyone who reaches it can rename, edit or delete the study"
        )
    console.print(f"optuna-dashboard for {run} at http://{host}:{port}/ (Ctrl-C to stop)")
    dash.serve(wsgi_app, host, port)


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
        summary = export_candidate(run, candidate, out, overwrite=overwrite)
    table = Table(title=f"candidate {candidate} (trial {summary['trial']}): {summary['parts']} parts")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("params", f"{summary['params_before']:,} -> {summary['params_after']:,}")
    for name, value in summary["values"].items():
        table.add_row(label(name), format_value(name, summary["per_sample"].get(name, value)))
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
        table.add_row(f"recorded by {score.recorded_by}{level}", format_value("accuracy", score.recorded))
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
def _rich(tab: Tab) -> Table:
    table = Table(title=tab.title, caption=tab.note or None, caption_justify="left", box=box.SIMPLE_HEAD)
    for k, column in enumerate(tab.columns):
        table.add_column(column, justify="left" if k == 0 else "right")
    for row in tab.rows:
        table.add_row(*row)
    return table


def _front_tables(review: rv.Review) -> list[Tab]:
    columns, rows = rv.front_rows(review)
    title = f"{review.study_name}: Pareto front ({len(rows)} candidate{'' if len(rows) == 1 else 's'})"
    return [
        Tab(title, columns, rows, rv.front_note(review)),
        Tab("hypervolume over trials (where it rose)", ["trial", "hypervolume"], _milestones(review)),
    ]


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


def _candidate_tables(review: rv.Review, view: CandidateView) -> list[Tab]:
    row, e = view.row, view.row.evaluation
    place = "on the front" if view.on_front else ("feasible, dominated" if row.feasible else "not on the front")
    if view.same_as is not None:
        place += f" (listed as {view.same_as}: the same plans)"
    summary = [
        ["trial", str(row.trial)],
        ["searcher", row.candidate.searcher],
        ["state", e.state + ("" if e.ok else f": {e.message}")],
        ["front", place],
    ]
    if "level" in e.metrics and review.levels():
        summary.append(["measured at", f"{review.levels()[int(e.metrics['level'])]} of {', '.join(review.levels())}"])
    batch = review.batch_size
    for o, v in zip(review.objectives, e.values, strict=False):
        shown = format_value(o.name, per_sample(o.name, v, batch))
        summary.append([f"{label(o.name)} ({'max' if o.direction == 'maximize' else 'min'})", shown])
        if f"test_{o.name}" in e.metrics:
            summary.append([f"test_{o.name} (report)", format_value(o.name, e.metrics[f"test_{o.name}"])])
    for c, v in zip(review.constraints, e.constraints, strict=False):
        status = "ok" if c.violation(v) == 0 else f"violated by {format_value(c.name, c.violation(v))}"
        per = f" per {batch} samples" if c.name in PER_BATCH else ""
        summary.append(
            [f"{c.name} {c.sense} {format_value(c.name, c.bound)}{per}", f"{format_value(c.name, v)} {status}"]
        )
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
        Tab(f"candidate {row.candidate.id}", ["", "value"], summary),
        Tab("keep ratio per coupling group", ["group", "kind", "channels", "asked", "kept", "keep ratio"], groups),
    ]
    if view.layers:
        layers = [[s["layer"], _sparsity(s["sparsity"]), s["pattern"] or "-"] for s in view.layers]
        tabs.append(Tab("sparsity per layer", ["layer", "sparsity", "N:M"], layers))
    parts = [
        [str(p["part"]), str(p["ops"]), format_value("macs", p["macs_per_sample"]), f"{100 * p['macs_share']:.1f}"]
        for p in view.parts
    ]
    tabs.append(Tab(f"partition ({view.plan.mode})", ["part", "ops", "MACs/sample (pruned)", "MACs %"], parts))
    return tabs


def _sparsity(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
