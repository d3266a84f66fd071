"""Run a search job: a job file (or a run folder to resume) -> validated config, task, Ray, driver and pool.

`run_search(config_or_run)` runs on an embedded local Ray by default, on a cluster with `address="auto"` /
`"ray://..."` / `"HOST:PORT"`, and unchanged under `ray job submit` (which sets RAY_ADDRESS). Ray's token
authentication stays as Ray configures it. Everything a job file says is checked before anything is written:
the config and the searcher's settings when the file is read, the model when the task builds its space, the
data against the model; then the base model is trained or checked (`cluster.base_model`; a start that fails
after training keeps the trained base in the run folder for the next), and the Ray address and the cluster's
room for one evaluator are checked before a fresh run folder is made. The loop itself is
`cluster.driver.SearchDriver`'s; the evaluators are `cluster.pool`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cluster.base_model import prepare_base
from cluster.config import JobConfig
from cluster.connect import join
from cluster.driver import SearchDriver, SearchProgress, SearchSummary
from cluster.pool import EvaluatorPool, evaluators_that_fit
from cluster.runs import CONFIG, open_run
from cluster.task import ModelTask, Task
from search.records import Candidate

__all__ = ["run_search"]


def run_search(
    config_or_run: JobConfig | str | Path,
    address: str | None = None,
    workers: int | None = None,
    resume: bool = False,
    progress: Callable[[SearchProgress], None] | None = None,
    task: Task | None = None,
    note: Callable[[str], None] | None = None,
) -> SearchSummary:
    """Run (or with `resume`, continue) a search job on Ray. `config_or_run`: a `JobConfig`, a job file, or
    (with `resume`) a run folder. `workers` overrides `evaluators.count`; `task` replaces the job's `ModelTask`
    (tests, benchmarks, custom evaluations); `note` hears what happens before the first trial (the model is
    built, the base model trained, Ray starts, evaluators start), `progress` every trial after."""
    say = note or (lambda text: None)
    config, folder = open_run(config_or_run, resume)
    task = task if task is not None else ModelTask(config)
    say(f"building {config.model} ...")
    task.space()  # model and spec errors now, before Ray starts (the space is kept for the driver)
    base = prepare_base(config, folder, say)  # train the base (once per run) only once the job is known to be good
    if base is not None and isinstance(task, ModelTask):
        task.use_base(base)
    wanted = workers or config.evaluators.count
    started, fit = False, None
    driver = pool = None
    try:
        if not (folder / CONFIG).is_file():  # a wrong address or too small a cluster fails before anything is written
            say(f"connecting to Ray{f' at {address}' if address else ''} ...")
            started = join(address)
            fit = evaluators_that_fit(config.evaluators, wanted)
        driver = SearchDriver(config, folder, task, wanted)
        if not driver.has_work():  # a finished run: report it without starting Ray
            return driver.drive(_Idle(), progress)
        if fit is None:
            say(f"connecting to Ray{f' at {address}' if address else ''} ...")
            started = join(address)
            fit = evaluators_that_fit(config.evaluators, wanted)
        driver.use_workers(*fit)
        say(f"starting {fit[0]} evaluator{'s' if fit[0] > 1 else ''} ...")
        pool = EvaluatorPool(task, config.evaluators, fit[0])
        return driver.drive(pool, progress)
    finally:
        if pool is not None:
            pool.close()
        if driver is not None:
            driver.close()
        if started:
            import ray

            ray.shutdown()


class _Idle:
    """The pool of a run with nothing left to do."""

    in_flight = replaced = 0

    def submit(self, candidate: Candidate) -> None:
        raise AssertionError("an idle pool takes no candidates")

    def wait(self) -> list:
        return []
