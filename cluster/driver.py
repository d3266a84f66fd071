"""The search driver: ask -> checkpoint -> submit -> wait -> record -> tell, a bounded number in flight.

What makes a run resumable at any moment, with no trial lost or counted twice:

1. after every ask, the searcher's state and every asked-but-unrecorded candidate are checkpointed
   (atomically, `cluster.checkpoint`) *before* any of them is submitted;
2. a result is recorded in the study *before* the searcher is told it; the next checkpoint follows the tell;
3. on resume, trials the checkpointed searcher was not told are told to it, asked candidates without a
   trial are submitted again, and new candidates continue the searcher's id counter (ids never repeat).

`budget.evaluations` counts recorded trials (complete and failed) and is met exactly: the driver never
asks for more than the budget minus the recorded and pending candidates. `budget.seconds` (summed over
resumes) stops asking; what is in flight still finishes and is recorded.

The driver is Ray-free: a pool (`cluster.pool.EvaluatorPool`, or an in-process one in tests) does the
remote work; the run folder's layout, lock and log are `cluster.runs`'.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cluster.checkpoint import Checkpoint, CheckpointWriter, Pending, reconcile
from cluster.config import JobConfig
from cluster.runs import CONFIG, LOG, NORMALIZER_ATTR, RunLock, RunLog, abandon_run, run_study, write_run_config
from cluster.task import EvaluationError, Task
from decomp.errors import DecompError, SearchError
from search.front import NORMALIZER_POINTS, FrontTracker
from search.pareto import Normalizer
from search.records import Candidate, Evaluation
from search.registry import make_searcher
from search.study import record_trial, trials_to_records

__all__ = ["Finished", "Pool", "SearchDriver", "SearchProgress", "SearchSummary"]


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
class Finished:
    """One result from a pool: an `Evaluation`, an `EvaluationError`, or `died` with the message when the
    evaluator died before answering (the candidate should be resubmitted)."""

    candidate: Candidate
    result: Evaluation | EvaluationError | None
    died: str = ""


class Pool(Protocol):
    """What the driver needs of a pool of evaluators."""

    in_flight: int  # candidates submitted and not yet returned by `wait`
    replaced: int  # evaluators started anew after dying for good

    def submit(self, candidate: Candidate) -> None: ...

    def wait(self) -> list[Finished]: ...


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
        s = config.searcher  # built before anything is written: a bad setting leaves no run folder behind
        self.searcher = make_searcher(s.name, self.space, self.objectives, self.constraints, seed=s.seed, **s.settings)
        before = {p.name for p in self.folder.iterdir()} if self.folder.is_dir() else None
        self.lock = RunLock(self.folder)
        self.log: RunLog | None = None
        self.resumed = (self.folder / CONFIG).is_file()
        try:
            self._open()
        except BaseException:
            self.close()
            if not self.resumed:  # leave the folder as it was: nothing of this run was recorded
                abandon_run(self.folder, before)
            raise

    def use_workers(self, count: int, note: str = "") -> None:
        """Drive `count` evaluators (fewer than asked where the cluster cannot hold more; `note` says so)."""
        if note:
            self.log(note)
        self.workers = count
        self.in_flight = self.config.evaluators.in_flight or 2 * count

    def close(self) -> None:
        """Let go of the run folder (log file, lock); safe to call more than once."""
        if self.log is not None:
            self.log.close()
            self.log = None
        self.lock.release()

    def _open(self) -> None:
        if not self.resumed:
            write_run_config(self.folder, self.config)
        self.log = RunLog(self.folder / LOG)
        self.study = run_study(self.folder, self.config, self.objectives, self.constraints, fresh=not self.resumed)
        checkpoint = Checkpoint.read(self.folder)
        records = trials_to_records(self.study)
        resubmit = reconcile(self.searcher, checkpoint, records, self.space)
        self.pending = {p.candidate.id: p for p in resubmit}
        self.elapsed_before = checkpoint.elapsed_s if checkpoint else 0.0
        self.tracker = FrontTracker(self.objectives, self.constraints)
        for _, evaluation in records:
            self.tracker.add(evaluation)
        stored = self.study.user_attrs.get(NORMALIZER_ATTR)
        if stored is not None:
            self.tracker.normalizer = Normalizer.from_json(stored)
        self.retried = self.resubmitted = 0
        self.writer = CheckpointWriter(self.folder)
        self.spent = {"searcher": 0.0, "store": 0.0, "checkpoint": 0.0}
        self.stopped = "evaluations"
        self.log(
            f"{'resume' if self.resumed else 'start'} {self.config.name}: {len(records)} trials recorded, "
            f"{len(resubmit)} asked candidates to resubmit, {self.workers} evaluators, {self.in_flight} in flight"
        )

    # -- the loop ------------------------------------------------------------------------------------

    def drive(self, pool: Pool, progress: Callable[[SearchProgress], None] | None = None) -> SearchSummary:
        """Run until the budget is met (or time is up and nothing is in flight); see the module docstring."""
        self.pool, self.progress = pool, progress
        self.started = time.perf_counter()
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
        self._maybe_fix_normalizer(min(NORMALIZER_POINTS, self.budget or NORMALIZER_POINTS))
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
        self.writer.write(self.searcher, list(self.pending.values()), self._elapsed(), self.space.names)
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
            self.pool.replaced,
            driver_s,
            dict(self.spent),
        )
