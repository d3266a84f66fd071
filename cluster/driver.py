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

Failures: a failed evaluation is submitted again after a back-off (`evaluators.retry_backoff_s`, doubling per
retry, at most `MAX_BACKOFF_S`). A candidate that fails beyond its retries is held, not recorded, until another
candidate succeeds (then the held ones are recorded failed: they fail on their own). When `pause_after`
candidates fail in a row (default max(3, evaluators): every evaluator failing, e.g. the machine out of memory
or a node gone), the search pauses with `SearchPaused`: the held candidates stay in the checkpoint, so
`--resume` evaluates them again once the cause is fixed, and no trial of the budget is spent on it.

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
from cluster.results import RunResults, identity
from cluster.runs import CONFIG, LOG, RunLock, RunLog, abandon_run, run_study, write_run_config
from cluster.task import EvaluationError, Measured, Task
from decomp.errors import DecompError
from search.front import NORMALIZER_POINTS
from search.records import Candidate, Evaluation
from search.registry import make_searcher

__all__ = ["Finished", "Pool", "SearchDriver", "SearchPaused", "SearchProgress", "SearchSummary"]

MAX_BACKOFF_S = 30.0


class SearchPaused(DecompError):
    """Candidates failed in a row on every evaluator: the search stopped with them kept for `--resume`."""


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
    """One result from a pool: an `Evaluation` (with the measured model's weights, where there were any), an
    `EvaluationError`, or `died` with the message when the evaluator died before answering (the candidate
    should be resubmitted)."""

    candidate: Candidate
    result: Evaluation | EvaluationError | None
    died: str = ""
    weights: bytes | None = None

    @classmethod
    def of(cls, candidate: Candidate, result: Measured | EvaluationError) -> Finished:
        """What an `Evaluator` answered for `candidate`."""
        if isinstance(result, EvaluationError):
            return cls(candidate, result)
        return cls(candidate, result.evaluation, weights=result.weights)


class Pool(Protocol):
    """What the driver needs of a pool of evaluators."""

    in_flight: int  # candidates submitted and not yet returned by `wait`
    replaced: int  # evaluators started anew after dying for good

    def submit(self, candidate: Candidate, level: int) -> None: ...

    def wait(self, timeout: float | None = None) -> list[Finished]: ...


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
        levels = len(self.task.levels)
        self.results = RunResults(
            self.folder, self.study, self.objectives, self.constraints, self.space, levels,
            self.config.accuracy.reduction, self.budget or NORMALIZER_POINTS,
        )  # fmt: skip
        self.tracker = self.results.tracker
        records = self.results.records
        resubmit = reconcile(self.searcher, checkpoint, records, self.space)
        self.pending = {p.candidate.id: p for p in resubmit}
        for p in resubmit:  # what the levels below gave, for the ladder
            self.results.resumed(p.candidate, p.done)
        self.elapsed_before = checkpoint.elapsed_s if checkpoint else 0.0
        self.retried = self.resubmitted = 0
        self.delayed: list[tuple[float, Pending]] = []  # (when, candidate) retries waiting out their back-off
        self.held: list[tuple[Pending, Evaluation]] = []  # failed beyond retries, recorded once another succeeds
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
            self._answer_duplicates()
            for p in self.pending.values():
                if p.duplicate_of is None:
                    self.pool.submit(p.candidate, p.level)
            self._fill(dirty=False)
            while self.pool.in_flight or self.delayed:
                t = time.perf_counter()
                finished = self._wait()
                waited += time.perf_counter() - t
                told = [self._handle(f) for f in finished]
                self._submit_due()
                self._fill(dirty=any(told))
            self._record_held()
            self._finish()
        except KeyboardInterrupt:
            self.log("interrupted; continue with --resume")
            raise
        finally:
            self.close()
        return self._summary(time.perf_counter() - self.started - waited)

    def _wait(self) -> list[Finished]:
        """Results, waiting no longer than the next retry's back-off."""
        if not self.delayed:
            return self.pool.wait()
        left = max(0.0, min(when for when, _ in self.delayed) - time.monotonic())
        if not self.pool.in_flight:
            time.sleep(left)
            return []
        return self.pool.wait(timeout=left)

    def _submit_due(self) -> None:
        now = time.monotonic()
        for when, pending in [d for d in self.delayed if d[0] <= now]:
            self.delayed.remove((when, pending))
            self.pool.submit(pending.candidate, pending.level)

    def _retry(self, pending: Pending, attempt: int) -> None:
        """Submit again after the back-off for its `attempt`-th retry."""
        base = self.config.evaluators.retry_backoff_s
        delay = min(MAX_BACKOFF_S, base * 2 ** (attempt - 1)) if base else 0.0
        if delay <= 0:
            self.pool.submit(pending.candidate, pending.level)
        else:
            self.delayed.append((time.monotonic() + delay, pending))

    def _failed(self, pending: Pending, result: Evaluation) -> bool:
        """A candidate failed beyond its retries: hold it, and pause the search when too many fail in a row."""
        self.held.append((pending, result))
        limit = self.config.evaluators.pause_after or max(3, self.workers)
        if len(self.held) < limit:
            return False
        self._checkpoint()  # the held candidates are pending in it: --resume evaluates them again
        last = result.message
        raise SearchPaused(
            f"the search is paused: {len(self.held)} candidates in a row failed on every retry (the last: {last}). "
            "That is the evaluators' machine, not the candidates (memory, a dead node, a broken install); none of "
            "them was recorded, so no trial of the budget is spent. Fix the cause and continue with --resume"
        )

    def _record_held(self) -> None:
        """Record the held failures: other candidates succeeded, so these fail on their own."""
        held, self.held = self.held, []
        for pending, result in held:
            self._record(pending, result)

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
        """Ask for what the budget and the in-flight bound allow; checkpoint; only then submit. A candidate with
        the plans of one recorded or in flight is not submitted: it gets that one's result."""
        while True:
            room = self._room()
            t = time.perf_counter()
            asked = self.searcher.ask(room) if room else []
            self.spent["searcher"] += time.perf_counter() - t
            in_flight = {identity(p.candidate): cid for cid, p in self.pending.items() if p.duplicate_of is None}
            for candidate in asked:
                key = identity(candidate)
                original = self.results.known(candidate)
                original = in_flight.get(key) if original is None else original
                self.pending[candidate.id] = Pending(candidate, duplicate_of=original)
                in_flight.setdefault(key, candidate.id)
            if asked or dirty:
                self._checkpoint()
            for candidate in asked:
                if self.pending[candidate.id].duplicate_of is None:
                    self.pool.submit(candidate, 0)
            if not self._answer_duplicates():
                return
            dirty = True  # duplicates were recorded: room for more, and a checkpoint to write

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
                self._retry(pending, pending.deaths)
                return False
            failed = Evaluation.failed(cid, f"its evaluator died {pending.deaths} times (last: {finished.died})")
            return self._failed(pending, failed)
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
                self._retry(pending, pending.errors)
                return False
            return self._failed(pending, Evaluation.failed(cid, f"{result.message} (failed {pending.errors} times)"))
        if result.ok:
            self._record_held()
        if result.ok and self.results.climbs(pending.level, result, pending.candidate):
            pending.climb(result)
            levels = self.task.levels
            self.log(f"candidate {cid}: {levels[pending.level - 1]} -> {levels[pending.level]}")
            self.pool.submit(pending.candidate, pending.level)
            return True  # its new level goes into the next checkpoint
        self._record(pending, result, finished.weights)
        return True

    def _record(self, pending: Pending, evaluation: Evaluation | None = None, weights: bytes | None = None) -> None:
        """Record a candidate's final result (a duplicate's is its original's), tell the searcher, report."""
        candidate = pending.candidate
        t = time.perf_counter()
        if pending.duplicate_of is None:
            evaluation = self.results.record(candidate, evaluation, pending.done, weights)
        else:
            evaluation = self.results.duplicate(candidate, pending.duplicate_of)
        del self.pending[candidate.id]
        t2 = time.perf_counter()
        self.searcher.tell(candidate, evaluation)
        self.spent["store"] += t2 - t
        self.spent["searcher"] += time.perf_counter() - t2
        if not evaluation.ok:
            line = f"candidate {candidate.id} failed: {evaluation.message}"
        else:
            values = ", ".join(f"{o.name}={v:.4g}" for o, v in zip(self.objectives, evaluation.values, strict=True))
            if pending.duplicate_of is not None:
                line = f"candidate {candidate.id} repeats the plans of {pending.duplicate_of}: {values} (not evaluated)"
            else:
                level = f" at {self.task.levels[pending.level]}" if len(self.task.levels) > 1 else ""
                line = f"candidate {candidate.id} complete{level}: {values} ({evaluation.wall_time:.2f} s)"
        self._report("trial", line)

    def _answer_duplicates(self) -> bool:
        """Record every pending duplicate whose original is recorded; True when there were any."""
        ready = [
            p for p in self.pending.values() if p.duplicate_of is not None and p.duplicate_of in self.results.final
        ]
        for p in ready:
            self._record(p)
        return bool(ready)

    def _checkpoint(self) -> None:
        t = time.perf_counter()
        self.writer.write(self.searcher, list(self.pending.values()), self._elapsed(), self.space.names)
        self.spent["checkpoint"] += time.perf_counter() - t

    def _finish(self) -> None:
        self.results.finish()
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
