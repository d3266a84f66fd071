"""`decomp search`: run a search job (or resume a run) on Ray with a live progress bar."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cluster.cli_app import JsonOut, app, console, write_json
from cluster.units import format_value, label, per_sample
from decomp.errors import DecompError

__all__ = ["search"]


@app.command()
def search(
    target: Annotated[
        Path, typer.Argument(help="a job file (e.g. configs/quickstart.yaml), or a run folder to resume")
    ],
    address: Annotated[
        Optional[str],
        typer.Option(help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: a local Ray, or RAY_ADDRESS)"),
    ] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="evaluators (default: evaluators.count)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run: a run folder, or the job file's run folder")] = False,
    json_path: JsonOut = None,
) -> None:
    """Search a job's pruning x partition space on Ray; every trial lands in the run folder's study."""
    import optuna

    from cluster.search_job import SearchProgress, run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the bar and the summary say what Optuna's INFO lines say

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("hypervolume {task.fields[hv]}"),
        TimeElapsedColumn(),
    )
    with _SearchBar(*columns, console=console, transient=False) as bar:
        task = bar.add_task("trials", total=None, failed=0, hv="-")

        batch = _batch_of(target)

        def show(p: SearchProgress) -> None:
            hv = f"{p.hypervolume:.4f}" if p.hypervolume is not None else "-"
            bar.status = ""
            bar.best = f"{BEST}: {_best(p.best, batch)}" if p.best else ""
            bar.update(task, completed=p.trials, total=p.budget, failed=p.failed, hv=hv)

        def note(text: str) -> None:
            bar.status = text
            bar.refresh()

        try:
            summary = run_search(target, address=address, workers=workers, resume=resume, progress=show, note=note)
        except KeyboardInterrupt:
            bar.stop()
            console.print(f"interrupted; every recorded trial is kept: continue with decomp search --resume {target}")
            raise typer.Exit(130) from None
    console.print(_summary_table(summary, batch))
    console.print(f"review the front: decomp pareto {summary.folder}")
    write_json(json_path, asdict(summary))


class _SearchBar(Progress):
    """The progress bar with a second line: the best value of every objective so far. Before the first trial
    event it shows what is being done instead (the model built, Ray started, evaluators started)."""

    best = ""
    status = "reading the job ..."

    def get_renderables(self):
        if self.status:
            yield Text(self.status)
            return
        yield self.make_tasks_table(self.tasks)
        if self.best:
            yield Text(self.best, overflow="fold")


def _summary_table(summary, batch: int | None) -> Table:
    table = Table(
        title=f"search {summary.study} ({'resumed, ' if summary.resumed else ''}stopped by {summary.stopped})",
        caption=f"{BEST}: no one candidate need have them all" if summary.best else None,
        caption_justify="left",
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("trials", f"{summary.trials} ({summary.complete} complete, {summary.failed} failed)"),
        ("hypervolume", f"{summary.hypervolume:.4f}" if summary.hypervolume is not None else "-"),
        ("seconds", f"{summary.elapsed_s:.1f}"),
        (
            "retried / resubmitted / evaluators replaced",
            f"{summary.retried} / {summary.resubmitted} / {summary.replaced}",
        ),
        *((f"best {name}", value) for name, value in _best_values(summary.best, batch)),
        ("run folder", summary.folder),
    ]
    for row in rows:
        table.add_row(*row)
    return table


BEST = "best per objective, each from whichever candidate is best at it"


def _best_values(best: dict[str, float], batch: int | None) -> list[tuple[str, str]]:
    """(name, value) of each objective's best feasible value, per sample where it was costed per micro-batch
    (`batch` samples; None: as costed)."""
    if batch is None:
        return [(name, format_value(name, value)) for name, value in best.items()]
    return [(label(name), format_value(name, per_sample(name, value, batch))) for name, value in best.items()]


def _best(best: dict[str, float], batch: int | None) -> str:
    return ", ".join(f"{name} {value}" for name, value in _best_values(best, batch))


def _batch_of(target: Path) -> int | None:
    """Samples per micro-batch the job costs its graph at, from the job file or run folder (None where it cannot
    be read: `run_search` says what is wrong with it)."""
    from cluster.config import load_config
    from cluster.runs import read_run_config

    try:
        config = read_run_config(target) if target.is_dir() else load_config(target)
    except DecompError:
        return None
    return config.latency.batch_size
