"""The search driver: ask -> checkpoint -> submit -> wait -> record -> tell, a bounded number in flight.

`run_search(config_or_run)` runs a job file (or resumes a run folder, `cluster.runs`) on Ray: an embedded
local Ray by default, `address="auto"` / `"ray://..."` / `"HOST:PORT"` for a cluster, and unchanged under
`ray job submit` (which sets RAY_ADDRESS). Ray's token authentication stays as Ray configures it.

What makes a run resumable at any moment, with no trial lost or counted twice:

1. after every ask, the searcher's state and every asked-but-unrecorded candidate are checkpointed
   (atomically) *before* any of them is submitted;
2. a result is recorded in the study *before* the searcher is told it; the next checkpoint follows the tell;
3. on resume, trials the checkpointed searcher was not told are told to it, asked candidates without a
   trial are submitted again, and new candidates continue the searcher's id counter (ids never repeat).

`budget.evaluations` counts recorded trials (complete and failed) and is met exactly: the driver never
asks for more than the budget minus the recorded and pending candidates. `budget.seconds` (summed over
resumes) stops asking; what is in flight still finishes and is recorded.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from cluster.config import JobConfig, load_config
from cluster.evaluator import EvaluationError, EvaluatorPool, Finished, ModelTask, Task
from cluster.runs import (
    CHECKPOINT,
    CONFIG,
    LOG,
    NORMALIZER_ATTR,
    read_checkpoint,
    read_run_config,
    storage_of,
    write_atomically,
    write_run_config,
)
from decomp.errors import DecompError, SearchError, SpecError
from search.base import Searcher, make_searcher
from search.pareto import Normalizer, hypervolume
from search.records import Candidate, Constraint, Evaluation, Objective
from search.space import Space
from search.study import create_study, record_trial, trials_to_records

__all__ = [
    "CHECKPOINT_FORMAT",
    "NORMALIZER_TRIALS",
    "Checkpoint",
    "Pending",
    "SearchDriver",
    "SearchProgress",
    "SearchSummary",
    "open_run",
    "reconcile",
    "run_search",
]

CHECKPOINT_FORMAT = "decomp.search-checkpoint/1"
NORMALIZER_TRIALS = 10  # complete trials that fix a study's hypervolume normaliser
OBJECTIVES_ATTR, CONSTRAINTS_ATTR = "decomp:objectives", "decomp:constraints"
LOCK = ".driver.lock"


@dataclass(frozen=True)
class SearchProgress:
    """What `progress` callbacks receive: at the start, after every recorded trial, and at the end."""

    event: str  # start | trial | end
    complete: int
    failed: int
    budget: int | None  # evaluations, when the job has that budget
    elapsed_s: float
    in_flight: int
    best: dict[str, float]  # per objective, the best feasible value so far (natural units)
    hypervolume: float | None  # of the feasible front, once the study's normaliser is fixed
    message: str = ""  # the event's log line

    @property
    def trials(self) -> int:
        return self.complete + self.failed


@dataclass(frozen=True)
class SearchSummary:
    """What a finished (or budget-met) search reports."""

    folder: str
    study: str
    complete: int
    failed: int
    best: dict[str, float]
    hypervolume: float | None
    elapsed_s: float  # over every driver of this run
    stopped: str  # evaluations | seconds
    resumed: bool
    retried: int  # evaluations run again after an error
    resubmitted: int  # candidates submitted again after their evaluator died
    replaced: int  # evaluators started anew after dying for good
    driver_s: float  # this driver's time outside waiting for results (ask, record, tell, checkpoints)
    spent_s: dict[str, float] = field(default_factory=dict)  # driver_s by part: searcher, store, checkpoint

    @property
    def trials(self) -> int:
        return self.complete + self.failed


@dataclass
class Pending:
    """An asked candidate without a trial yet, with its failed attempts so far."""

    candidate: Candidate
    errors: int = 0
    deaths: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"candidate": self.candidate.to_json(), "errors": self.errors, "deaths": self.deaths}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pending:
        return cls(Candidate.from_json(data["candidate"]), int(data.get("errors", 0)), int(data.get("deaths", 0)))


@dataclass
class Checkpoint:
    """The driver's state in `checkpoint.json`: the searcher's, the asked candidates without a trial, the
    seconds searched so far, and the space's gene names (a resume over another space is refused)."""

    searcher: dict[str, Any]
    pending: list[Pending] = field(default_factory=list)
    elapsed_s: float = 0.0
    genes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "genes": self.genes,
            "elapsed_s": self.elapsed_s,
            "pending": [p.to_json() for p in self.pending],
            "searcher": self.searcher,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "checkpoint") -> Checkpoint:
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise SpecError(f"{where} is not a {CHECKPOINT_FORMAT} checkpoint; was it written by another version?")
        return cls(
            data["searcher"],
            [Pending.from_json(p) for p in data.get("pending", [])],
            float(data.get("elapsed_s", 0.0)),
            list(data.get("genes", [])),
        )


def reconcile(
    searcher: Searcher, checkpoint: Checkpoint | None, records: Sequence[tuple[Candidate, Evaluation]], space: Space
) -> list[Pending]:
    """Bring `searcher` up to the study's `records` from `checkpoint` and return the asked candidates that
    have no trial (to submit again). Refuses states no order of events could have left behind."""
    ids = [c.id for c, _ in records]
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise SpecError(f"the study records candidate(s) {repeated[:5]} more than once; it was written by hand?")
    if checkpoint is None:
        if records:
            raise SpecError(
                f"the study holds {len(records)} trials but the run has no {CHECKPOINT} (deleted?): the searcher's "
                "state is lost, so the run cannot resume exactly; start a new run"
            )
        return []
    if checkpoint.genes and checkpoint.genes != list(space.names):
        raise SpecError(
            f"the search space changed since the run started (genes {checkpoint.genes[:4]}... now "
            f"{list(space.names)[:4]}...): the model, job or code differs; start a new run"
        )
    searcher.load_state_dict(checkpoint.searcher)
    asked = {p.candidate.id: p.candidate for p in checkpoint.pending}
    told = {t.id for t in searcher.history}
    if not told <= set(ids):
        missing = sorted(told - set(ids))[:5]
        raise SpecError(f"the searcher was told candidate(s) {missing} the study does not hold; was the storage reset?")
    next_id = int(checkpoint.searcher.get("next_id", 0))
    if ids and max(ids) >= next_id:
        raise SpecError(f"the study holds candidate {max(ids)}, which the checkpointed searcher never asked")
    for candidate, evaluation in records:
        if candidate.id not in told:
            searcher.tell(asked.get(candidate.id, candidate), evaluation)
    recorded = set(ids)
    return [p for p in checkpoint.pending if p.candidate.id not in recorded]


def open_run(config_or_run: JobConfig | str | Path, resume: bool = False) -> tuple[JobConfig, Path]:
    """The job config (relative file names made absolute) and its run folder, checked against what is on disk:
    a fresh start may not overwrite a run, a resume needs a run with the same config."""
    if isinstance(config_or_run, JobConfig):
        config, folder, base = config_or_run, config_or_run.run_folder(), Path.cwd()
    else:
        path = Path(config_or_run)
        if path.is_dir():
            if not resume:
                raise SpecError(f"{path} is a run folder; continue it with --resume (resume=True)")
            return read_run_config(path), path
        if not path.is_file():
            raise SpecError(f"no job file or run folder at {path}")
        config = load_config(path)
        folder, base = config.run_folder(), path.parent
    config = _absolute(config, base)
    if resume:
        stored = read_run_config(folder) if folder.is_dir() else None
        if stored is None:
            raise SpecError(f"nothing to resume at {folder}; start the search without --resume")
        changed = _changed(stored, config)
        if changed:
            raise SpecError(
                f"the job config differs from the run's ({folder / CONFIG}) in: {', '.join(changed)}; resume with the "
                "run folder to continue it as it was, or give the changed job another name or run.folder"
            )
        return stored, folder
    if (folder / CONFIG).is_file():
        raise SpecError(
            f"{folder} already holds a run; continue it with --resume, or set another name or run.folder to start anew"
        )
    if folder.is_dir() and any(folder.iterdir()):
        raise SpecError(f"{folder} exists and is not a run folder; choose another run.folder or empty it")
    return config, folder


def _absolute(config: JobConfig, base: Path) -> JobConfig:
    """Files the job names (weights, op table, calibration, cluster file) as absolute paths, so the run folder's
    config means the same wherever the run is resumed from."""

    def fix(name: str | None) -> str | None:
        if name is None or Path(name).expanduser().is_absolute():
            return name
        return str((base / name).resolve())

    latency = config.latency.model_copy(
        update={"table": fix(config.latency.table), "calibration": fix(config.latency.calibration)}
    )
    update: dict[str, Any] = {"weights": fix(config.weights), "latency": latency}
    if isinstance(config.cluster, str) and (base / config.cluster).is_file():
        update["cluster"] = fix(config.cluster)
    return config.model_copy(update=update)


def _changed(a: JobConfig, b: JobConfig) -> list[str]:
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    return [k for k in da if da[k] != db.get(k)]


class _Tracker:
    """Best values, the feasible front and its hypervolume under the study's fixed normaliser."""

    def __init__(self, objectives: Sequence[Objective], constraints: Sequence[Constraint]) -> None:
        self.objectives, self.constraints = tuple(objectives), tuple(constraints)
        self.signs = np.array([o.sign for o in objectives])
        self.complete = self.failed = 0
        self.first: list[np.ndarray] = []  # the first complete points, for the normaliser
        self.front = np.zeros((0, len(objectives)))
        self.normalizer: Normalizer | None = None
        self._volume: float | None = None

    def add(self, evaluation: Evaluation) -> None:
        if not evaluation.ok:
            self.failed += 1
            return
        self.complete += 1
        point = np.asarray(evaluation.values) * self.signs
        if len(self.first) < NORMALIZER_TRIALS:
            self.first.append(point)
        feasible = all(c.violation(v) == 0.0 for c, v in zip(self.constraints, evaluation.constraints, strict=True))
        if not feasible:
            return
        front = self.front
        if np.any(np.all(front <= point, axis=1) & np.any(front < point, axis=1)):
            return  # dominated: the front and its hypervolume stay
        beaten = np.all(point <= front, axis=1) & np.any(point < front, axis=1)
        self.front = np.vstack([front[~beaten], point])
        self._volume = None

    def fix_normalizer(self, at_least: int) -> Normalizer | None:
        """A normaliser from the first complete points, once there are `at_least` (None before)."""
        if self.normalizer is None and self.first and len(self.first) >= at_least:
            self.normalizer = Normalizer.from_points(np.array(self.first))
            self._volume = None
            return self.normalizer
        return None

    @property
    def best(self) -> dict[str, float]:
        if len(self.front) == 0:
            return {}
        best = self.front.min(axis=0) * self.signs
        return {o.name: float(v) for o, v in zip(self.objectives, best, strict=True)}

    @property
    def hypervolume(self) -> float | None:
        if self.normalizer is None:
            return None
        if self._volume is None:
            self._volume = hypervolume(self.front, self.normalizer) if len(self.front) else 0.0
        return self._volume


class _HistoryJSON:
    """The checkpoint's JSON text with the searcher's told history serialised once per entry: the history only
    grows, and dumping all of it at every checkpoint would make each trial cost more than the one before."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, data: dict[str, Any], history: list[Any]) -> str:
        texts = self.texts
        if len(history) < len(texts) or (texts and json.dumps(history[len(texts) - 1]) != texts[-1]):
            texts.clear()  # not the history seen before (a restored searcher): start over
        texts.extend(json.dumps(entry) for entry in history[len(texts) :])
        searcher = json.dumps(data.pop("searcher"))
        searcher = searcher[:-1] + ("" if searcher == "{}" else ", ") + '"history": [' + ", ".join(texts) + "]}"
        return json.dumps(data)[:-1] + ', "searcher": ' + searcher + "}"


class _Log:
    """log.txt: one line per event, flushed as written."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a", buffering=1)  # noqa: SIM115 - held open for the run, closed in close()

    def __call__(self, line: str) -> str:
        self.file.write(f"{datetime.now().isoformat(timespec='seconds')} {line}\n")
        return line

    def close(self) -> None:
        self.file.close()


class _Lock:
    """Holds an exclusive lock on the run folder while a driver runs (the kernel frees it if the driver dies)."""

    def __init__(self, folder: Path) -> None:
        import fcntl
        import os

        folder.mkdir(parents=True, exist_ok=True)
        self.file = open(folder / LOCK, "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            self.file.close()
            raise SpecError(
                f"run {folder} is being driven by another process (pid {holder}); wait for it or stop it"
            ) from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()

    def release(self) -> None:
        if not self.file.closed:
            self.file.close()


class SearchDriver:
    """One driver of one run folder: opens (or creates) the study and checkpoint, reconciles them, and
    `drive(pool)` runs the loop the module docstring describes. Ray-free: the pool does the remote work."""

    def __init__(self, config: JobConfig, folder: Path, task: Task, workers: int | None = None) -> None:
        self.config, self.folder, self.task = config, Path(folder), task
        self.objectives, self.constraints = config.objective_records(), config.constraint_records()
        self.space = task.space()
        self.workers = workers or config.evaluators.count
        self.in_flight = config.evaluators.in_flight or 2 * self.workers
        self.budget, self.seconds = config.budget.evaluations, config.budget.seconds
        self.lock = _Lock(self.folder)
        self.log: _Log | None = None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Let go of the run folder (log file, lock); safe to call more than once."""
        if self.log is not None:
            self.log.close()
            self.log = None
        self.lock.release()

    def _open(self) -> None:
        self.resumed = (self.folder / CONFIG).is_file()
        if not self.resumed:
            write_run_config(self.folder, self.config)
        self.log = _Log(self.folder / LOG)
        try:
            self.study = self._study()
        except DecompError:
            if not self.resumed:  # leave the folder as it was: nothing of this run was recorded
                (self.folder / CONFIG).unlink(missing_ok=True)
            raise
        s = self.config.searcher
        self.searcher = make_searcher(s.name, self.space, self.objectives, self.constraints, seed=s.seed, **s.settings)
        data = read_checkpoint(self.folder)
        checkpoint = Checkpoint.from_json(data, str(self.folder / CHECKPOINT)) if data is not None else None
        records = trials_to_records(self.study)
        resubmit = reconcile(self.searcher, checkpoint, records, self.space)
        self.pending = {p.candidate.id: p for p in resubmit}
        self.elapsed_before = checkpoint.elapsed_s if checkpoint else 0.0
        self.tracker = _Tracker(self.objectives, self.constraints)
        for _, evaluation in records:
            self.tracker.add(evaluation)
        stored = self.study.user_attrs.get(NORMALIZER_ATTR)
        if stored is not None:
            self.tracker.normalizer = Normalizer.from_json(stored)
        self.retried = self.resubmitted = 0
        self.history_json = _HistoryJSON()
        self.spent = {"searcher": 0.0, "store": 0.0, "checkpoint": 0.0}
        self.stopped = "evaluations"
        self.log(
            f"{'resume' if self.resumed else 'start'} {self.config.name}: {len(records)} trials recorded, "
            f"{len(resubmit)} asked candidates to resubmit, {self.workers} evaluators, {self.in_flight} in flight"
        )

    def _study(self) -> optuna.Study:
        storage = storage_of(self.folder, self.config)
        study = create_study(self.objectives, storage, study_name=self.config.name, load_if_exists=True)
        objectives = [o.to_json() for o in self.objectives]
        constraints = [c.to_json() for c in self.constraints]
        attrs = study.user_attrs
        if OBJECTIVES_ATTR not in attrs:
            if not self.resumed and study.get_trials(deepcopy=False):
                raise SpecError(
                    f"the storage already holds a study {self.config.name!r} with trials; give the job another name"
                )
            study.set_user_attr(OBJECTIVES_ATTR, objectives)
            study.set_user_attr(CONSTRAINTS_ATTR, constraints)
        elif attrs[OBJECTIVES_ATTR] != objectives or attrs.get(CONSTRAINTS_ATTR) != constraints:
            raise SpecError(
                f"study {self.config.name!r} was recorded with objectives {attrs[OBJECTIVES_ATTR]} and constraints "
                f"{attrs.get(CONSTRAINTS_ATTR)}, not these; give the job another name"
            )
        return study

    # -- the loop ------------------------------------------------------------------------------------

    def drive(self, pool: Any, progress: Callable[[SearchProgress], None] | None = None) -> SearchSummary:
        """Run until the budget is met (or time is up and nothing is in flight); see the module docstring.
        `pool`: `submit(candidate)`, `wait() -> [Finished]`, `in_flight`, `replaced` (an `EvaluatorPool`)."""
        self.pool, self.progress = pool, progress
        self.started = time.perf_counter()
        if getattr(pool, "note", ""):
            self.log(pool.note)
        if getattr(pool, "count", self.workers) < self.workers and self.config.evaluators.in_flight is None:
            self.in_flight = 2 * pool.count
        waited = 0.0
        try:
            self._report("start", f"{self.tracker.complete + self.tracker.failed} trials so far")
            self._checkpoint()  # the reconciled state, before anything is submitted
            for p in self.pending.values():
                self.pool.submit(p.candidate)
            self._fill(dirty=False)
            while self.pool.in_flight:
                t = time.perf_counter()
                finished = self.pool.wait()
                waited += time.perf_counter() - t
                told = [self._handle(f) for f in finished]
                self._fill(dirty=any(told))
            self._finish()
        except KeyboardInterrupt:
            self.log("interrupted; continue with --resume")
            raise
        finally:
            self.close()
        return self._summary(time.perf_counter() - self.started - waited)

    def has_work(self) -> bool:
        """Whether candidates wait to be resubmitted or the budget allows more."""
        self.started = time.perf_counter()
        return bool(self.pending) or self._room() > 0

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def _room(self) -> int:
        if self.seconds is not None and self._elapsed() >= self.seconds:
            self.stopped = "seconds"
            return 0
        room = self.in_flight - len(self.pending)
        if self.budget is not None:
            room = min(room, self.budget - self.tracker.complete - self.tracker.failed - len(self.pending))
        return max(0, room)

    def _fill(self, dirty: bool) -> None:
        """Ask for what the budget and the in-flight bound allow; checkpoint; only then submit."""
        room = self._room()
        t = time.perf_counter()
        asked = self.searcher.ask(room) if room else []
        self.spent["searcher"] += time.perf_counter() - t
        for candidate in asked:
            self.pending[candidate.id] = Pending(candidate)
        if asked or dirty:
            self._checkpoint()
        for candidate in asked:
            self.pool.submit(candidate)

    def _handle(self, finished: Finished) -> bool:
        """Resubmit, or record and tell; True when a trial was recorded."""
        pending = self.pending[finished.candidate.id]
        cid, retries = pending.candidate.id, self.config.evaluators.retries
        result = finished.result
        if finished.died:
            pending.deaths += 1
            if pending.deaths <= max(3, retries + 1):
                self.resubmitted += 1
                self.log(f"candidate {cid}: its evaluator died ({finished.died}); submitted again")
                self.pool.submit(pending.candidate)
                return False
            result = Evaluation.failed(cid, f"its evaluator died {pending.deaths} times (last: {finished.died})")
        elif isinstance(result, EvaluationError):
            if result.fatal:
                raise DecompError(
                    f"{result.message}. The run is kept: resume it with --resume once the cause is fixed where the "
                    "evaluators run (a changed job file needs a new run)"
                )
            pending.errors += 1
            if pending.errors <= retries:
                self.retried += 1
                self.log(f"candidate {cid}: {result.message}; retry {pending.errors} of {retries}")
                self.pool.submit(pending.candidate)
                return False
            result = Evaluation.failed(cid, f"{result.message} (failed {pending.errors} times)")
        self._record(pending.candidate, result)
        return True

    def _record(self, candidate: Candidate, evaluation: Evaluation) -> None:
        args = (self.objectives, self.constraints, self.space)
        t = time.perf_counter()
        try:
            record_trial(self.study, candidate, evaluation, *args)
        except SearchError as err:  # the task gave values that do not fit the job: a failed trial, say why
            evaluation = Evaluation.failed(candidate.id, f"the evaluation does not fit the job: {err}")
            record_trial(self.study, candidate, evaluation, *args)
        del self.pending[candidate.id]
        t2 = time.perf_counter()
        self.searcher.tell(candidate, evaluation)
        self.spent["store"] += t2 - t
        self.spent["searcher"] += time.perf_counter() - t2
        self.tracker.add(evaluation)
        self._maybe_fix_normalizer(min(NORMALIZER_TRIALS, self.budget or NORMALIZER_TRIALS))
        if evaluation.ok:
            values = ", ".join(f"{o.name}={v:.4g}" for o, v in zip(self.objectives, evaluation.values, strict=True))
            line = f"candidate {candidate.id} complete: {values} ({evaluation.wall_time:.2f} s)"
        else:
            line = f"candidate {candidate.id} failed: {evaluation.message}"
        self._report("trial", line)

    def _maybe_fix_normalizer(self, at_least: int) -> None:
        normalizer = self.tracker.fix_normalizer(at_least)
        if normalizer is not None:
            self.study.set_user_attr(NORMALIZER_ATTR, normalizer.to_json())

    def _checkpoint(self) -> None:
        t = time.perf_counter()
        state = self.searcher.state_dict()
        history = state.pop("history")
        checkpoint = Checkpoint(state, list(self.pending.values()), self._elapsed(), list(self.space.names))
        write_atomically(self.folder / CHECKPOINT, self.history_json(checkpoint.to_json(), history))
        self.spent["checkpoint"] += time.perf_counter() - t

    def _finish(self) -> None:
        self._maybe_fix_normalizer(1)
        self._checkpoint()
        t = self.tracker
        if self.budget is not None and t.complete + t.failed >= self.budget:
            self.stopped = "evaluations"
        self._report("end", f"done ({self.stopped}): {t.complete} complete, {t.failed} failed")

    def _report(self, event: str, line: str) -> None:
        self.log(line)
        if self.progress is not None:
            t = self.tracker
            self.progress(
                SearchProgress(
                    event,
                    t.complete,
                    t.failed,
                    self.budget,
                    self._elapsed(),
                    len(self.pending),
                    t.best,
                    t.hypervolume,
                    line,
                )
            )

    def _summary(self, driver_s: float) -> SearchSummary:
        t = self.tracker
        return SearchSummary(
            str(self.folder),
            self.config.name,
            t.complete,
            t.failed,
            t.best,
            t.hypervolume,
            self._elapsed(),
            self.stopped,
            self.resumed,
            self.retried,
            self.resubmitted,
            getattr(self.pool, "replaced", 0),
            driver_s,
            dict(self.spent),
        )


def run_search(
    config_or_run: JobConfig | str | Path,
    address: str | None = None,
    workers: int | None = None,
    resume: bool = False,
    progress: Callable[[SearchProgress], None] | None = None,
    task: Task | None = None,
) -> SearchSummary:
    """Run (or with `resume`, continue) a search job on Ray; see the module docstring. `config_or_run`: a
    `JobConfig`, a job file, or (with `resume`) a run folder. `workers` overrides `evaluators.count`; `task`
    replaces the job's `ModelTask` (tests, benchmarks, custom evaluations)."""
    config, folder = open_run(config_or_run, resume)
    task = task if task is not None else ModelTask(config)
    task.space()  # model and spec errors now, before Ray starts (the space is kept for the driver)
    started = False
    if not (folder / CONFIG).is_file():
        started = _connect(address)  # a fresh run: a wrong address fails before anything is written
    driver = pool = None
    try:
        driver = SearchDriver(config, folder, task, workers)
        if not driver.has_work():  # a finished run: report it without starting Ray
            return driver.drive(_Idle(), progress)
        started = _connect(address) or started
        pool = EvaluatorPool(task, config.evaluators, driver.workers)
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


def _connect(address: str | None) -> bool:
    """Connect to Ray (see `cluster.connect`); True when this call started it. Errors say what to do."""
    import ray

    from cluster.connect import connect

    if ray.is_initialized():
        return False
    try:
        connect(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        text, cause = str(err), err.__cause__
        while cause is not None:
            text, cause = f"{text} {cause}", cause.__cause__
        hint = "check the address (e.g. --address auto on a cluster node, or ray://HEAD:10001)"
        if "auth" in text.lower():
            hint = (
                "the cluster uses token authentication: export RAY_AUTH_MODE=token and put the cluster's token in "
                "~/.ray/auth_token (or RAY_AUTH_TOKEN)"
            )
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DecompError(f"cannot connect to Ray at {address or 'RAY_ADDRESS'}: {first}; {hint}") from None
    return True
