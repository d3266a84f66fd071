"""Evaluators on Ray: the `Evaluator` that runs a task, its actor, and a pool of actors the driver submits to.

`EvaluatorPool` keeps `count` actors busy: Ray restarts an actor whose process dies (`max_restarts`) and runs
its lost call once more; an actor that is dead for good (killed, restarts used up) is replaced by a fresh one;
calls that still fail come back to the driver as `died`, to resubmit. `evaluators_that_fit` says how many
evaluators the cluster can hold at once, before any is started.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from typing import Any

import ray
import torch
from ray.exceptions import ActorDiedError, RayActorError, RayError

from cluster.config import EvaluatorSpec
from cluster.driver import Finished
from cluster.task import EvaluationError, Measured, Task
from decomp.errors import DecompError, SpecError
from search.records import Candidate, Evaluation

__all__ = ["Evaluator", "EvaluatorActor", "EvaluatorPool", "evaluators_that_fit"]

MAX_LINGER_S = 0.05  # longest wait for more results once one is in (see `EvaluatorPool.wait`)


class Evaluator:
    """Runs a task where it lives (a Ray actor, or this process in tests): torch threads set once, the
    task set up lazily before the first candidate, every exception turned into an `EvaluationError`."""

    def __init__(self, task: Task, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        self.task = task
        self.ready = False
        self.evaluations, self.busy_s = 0, 0.0

    def evaluate(self, candidate: Candidate, level: int = 0) -> Measured | EvaluationError:
        """The task's result for `candidate` at fidelity `level`, always as `Measured` (or the error)."""
        start = time.perf_counter()
        try:
            result = self._evaluate(candidate, level)
            return Measured(result) if isinstance(result, Evaluation) else result
        finally:
            self.busy_s += time.perf_counter() - start

    def _evaluate(self, candidate: Candidate, level: int) -> Evaluation | Measured | EvaluationError:
        if not self.ready:
            try:
                self.task.setup()
            except DecompError as err:
                return EvaluationError(
                    candidate.id, f"evaluator setup failed: {type(err).__name__}: {err}", traceback.format_exc(), True
                )
            except Exception as err:  # noqa: BLE001 - a transient failure (memory, I/O): the driver retries
                return EvaluationError(candidate.id, f"evaluator setup failed: {_text(err)}", traceback.format_exc())
            self.ready = True
        try:
            evaluation = self.task.evaluate(candidate, level)
        except Exception as err:  # noqa: BLE001 - any failure of one evaluation is the driver's to retry
            return EvaluationError(candidate.id, _text(err), traceback.format_exc())
        self.evaluations += 1
        return evaluation

    def stats(self) -> dict[str, Any]:
        """Evaluations done, seconds spent in them (setup included), process id and torch threads."""
        return {
            "evaluations": self.evaluations,
            "busy_s": self.busy_s,
            "pid": os.getpid(),
            "threads": torch.get_num_threads(),
        }


def _text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


EvaluatorActor = ray.remote(Evaluator)


class EvaluatorPool:
    """`count` evaluator actors with the resources of `spec` (`evaluators_that_fit` says how many the cluster
    holds); candidates go to the least busy one."""

    def __init__(self, task: Task, spec: EvaluatorSpec, count: int | None = None, max_restarts: int = 3) -> None:
        self.task, self.spec, self.max_restarts = task, spec, max_restarts
        self.count = count or spec.count
        self.actors = [self._start() for _ in range(self.count)]
        self.busy = [0] * self.count
        self.running: dict[ray.ObjectRef, tuple[int, Any, Candidate]] = {}
        self.replaced = 0
        self.typical_s = 0.0  # moving average of evaluation wall times

    def _start(self):
        # Ray restarts a crashed actor and runs the call it lost once more on the new one (max_task_retries=1,
        # which also holds calls sent while it restarts); what still fails comes back to the driver as died
        options: dict[str, Any] = {"num_cpus": self.spec.cpus, "max_restarts": self.max_restarts, "max_task_retries": 1}
        if self.spec.gpus:
            options["num_gpus"] = self.spec.gpus
        # the task travels by value (small: a config), so Ray can rebuild the actor on a restart from the spec alone
        return EvaluatorActor.options(**options).remote(self.task, self.spec.threads)

    @property
    def in_flight(self) -> int:
        return len(self.running)

    def submit(self, candidate: Candidate, level: int = 0) -> None:
        slot = min(range(self.count), key=self.busy.__getitem__)
        actor = self.actors[slot]
        self.running[actor.evaluate.remote(candidate, level)] = (slot, actor, candidate)
        self.busy[slot] += 1

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """Results ready now, waiting up to `timeout` seconds (None: until one is) for the first. Once one is in,
        it lingers a quarter of a typical evaluation (at most `MAX_LINGER_S`) for one result per evaluator, so the
        driver's per-wake work (checkpoint, ask) serves several results; every evaluator still has queued work
        when there are 2 in flight per evaluator."""
        if not self.running:
            return []
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=timeout)
        if ready and len(self.running) > 1:
            want = min(len(self.running), self.count)
            linger = min(MAX_LINGER_S, 0.25 * self.typical_s) if want > 1 else 0.0
            ready, _ = ray.wait(list(self.running), num_returns=want, timeout=linger)
            ready, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        return [self._collect(ref) for ref in ready]

    def _collect(self, ref: ray.ObjectRef) -> Finished:
        slot, actor, candidate = self.running.pop(ref)
        self.busy[slot] -= 1
        try:
            finished = Finished.of(candidate, ray.get(ref))
            wall = finished.result.wall_time if isinstance(finished.result, Evaluation) else 0.0
            if wall > 0:
                self.typical_s = 0.8 * self.typical_s + 0.2 * wall if self.typical_s else wall
            return finished
        except RayActorError as err:
            if isinstance(err, ActorDiedError) and self.actors[slot] is actor:  # dead for good: a new one
                ray.kill(actor)
                self.actors[slot] = self._start()
                self.replaced += 1
            return Finished(candidate, None, died=_first_line(err))
        except RayError as err:  # the call failed outside the task (e.g. its result could not be stored)
            return Finished(candidate, EvaluationError(candidate.id, _first_line(err)))

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.running = [], {}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def evaluators_that_fit(spec: EvaluatorSpec, count: int) -> tuple[int, str]:
    """How many of `count` evaluators the connected cluster can hold at once, and a note when that is fewer:
    actors beyond that would wait forever for resources the others never give back, and so would the
    candidates sent to them. None fitting is an error that says what to change."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    if spec.gpus > 0 and gpus < spec.gpus:
        raise SpecError(
            f"evaluators.gpus is {spec.gpus:g} but the Ray cluster has {gpus:g} GPUs; set evaluators.gpus: 0 "
            "to evaluate on CPUs, or join a cluster with GPUs (--address)"
        )
    if cpus < spec.cpus:
        raise SpecError(
            f"evaluators.cpus is {spec.cpus:g} but the Ray cluster has {cpus:g} CPUs; lower evaluators.cpus "
            "or join a larger cluster (--address)"
        )
    fits = math.floor(cpus / spec.cpus + 1e-9)
    if spec.gpus > 0:
        fits = min(fits, math.floor(gpus / spec.gpus + 1e-9))
    fitting = max(1, min(count, fits))
    if fitting == count:
        return count, ""
    each = f"{spec.cpus:g} CPUs{f', {spec.gpus:g} GPUs' if spec.gpus else ''} each"
    return fitting, f"only {fitting} of {count} evaluators fit the Ray cluster's resources ({each}); running {fitting}"
