"""The search driver without Ray: an in-process pool stands in for the evaluator actors.

Invariants: every asked candidate is checkpointed before it is submitted and recorded before the searcher
is told it; the budget is met exactly; errors are retried then recorded with their message; a driver that
stops at any point resumes with no trial lost or counted twice and no candidate id used twice."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import ray
from typer.testing import CliRunner

from cluster.checkpoint import Checkpoint, Pending, reconcile
from cluster.config import JobConfig, parse_config
from cluster.driver import Finished, SearchDriver, SearchPaused
from cluster.pool import Evaluator
from cluster.runs import CHECKPOINT, CONFIG, JOURNAL, LOG, NORMALIZER_ATTR, open_run, open_study
from cluster.search_job import run_search
from cluster.task import EvaluationError, Measured, ModelTask
from decomp.errors import DecompError, SpecError
from search.records import Candidate, Evaluation, Gene, Objective
from search.registry import make_searcher
from search.space import BoxSpace, Space
from search.study import trials_to_records


def job(tmp_path: Path, **changes) -> dict:
    data = {
        "name": "box",
        "model": "python:tests.tiny_models:tiny_net",
        "objectives": ["macs", "params"],
        "searcher": {"name": "nsga2", "seed": 0, "settings": {"population": 6}},
        "budget": {"evaluations": 13},
        "evaluators": {"count": 2, "retries": 2, "retry_backoff_s": 0.01},
        "run": {"folder": str(tmp_path / "run")},
    }
    data.update(changes)
    return data


class BoxTask:
    """Two objectives over a 3-gene box; `raises` maps candidate id -> how many times its evaluation raises."""

    def __init__(self, raises: dict[int, int] | None = None, fatal: bool = False, sleep: float = 0.0) -> None:
        self.raises, self.fatal, self.sleep, self.calls = dict(raises or {}), fatal, sleep, {}
        self.times: dict[int, list[float]] = {}

    def space(self):
        return BoxSpace(3)

    def setup(self) -> None:
        if self.fatal:
            raise SpecError("unknown data spec 'mnsit'")

    levels = ("costs",)

    def evaluate(self, candidate: Candidate, level: int = 0) -> Evaluation:
        self.calls[candidate.id] = self.calls.get(candidate.id, 0) + 1
        self.times.setdefault(candidate.id, []).append(time.monotonic())
        if self.calls[candidate.id] <= self.raises.get(candidate.id, 0):
            raise RuntimeError(f"out of memory on candidate {candidate.id}")
        time.sleep(self.sleep)
        x = candidate.genome
        return Evaluation.of(candidate.id, [x[0], 1 + x[1] - x[0] ** 0.5 + x[2]])


class Stop(BaseException):
    """Stands in for SIGKILL: nothing after it runs (the driver catches no BaseException)."""


class InlinePool:
    """Runs evaluations in this process, oldest first, two at a time. Checks on every submit that the
    candidate is already in the checkpoint on disk; `die` lists candidate ids whose first attempt "dies";
    `stop_at` raises `Stop` at that submit (or wait) count."""

    def __init__(self, task, folder: Path, die=(), stop_submit: int | None = None, stop_wait: int | None = None):
        self.evaluator, self.folder = Evaluator(task), folder
        self.queue: list[tuple[Candidate, int]] = []
        self.die, self.died = set(die), set()
        self.stop_submit, self.stop_wait = stop_submit, stop_wait
        self.submits = self.waits = self.replaced = 0

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def submit(self, candidate: Candidate, level: int = 0) -> None:
        self.submits += 1
        checkpoint = json.loads((self.folder / CHECKPOINT).read_text())
        assert candidate.id in [p["candidate"]["id"] for p in checkpoint["pending"]], "submitted before checkpointed"
        if self.submits == self.stop_submit:
            raise Stop
        self.queue.append((candidate, level))

    def wait(self, timeout: float | None = None) -> list[Finished]:
        self.waits += 1
        if self.waits == self.stop_wait:
            raise Stop
        out = []
        for candidate, level in self.queue[:2]:
            if candidate.id in self.die and candidate.id not in self.died:
                self.died.add(candidate.id)
                out.append(Finished(candidate, None, died="ActorDiedError: killed"))
            else:
                out.append(Finished.of(candidate, self.evaluator.evaluate(candidate, level)))
        self.queue = self.queue[2:]
        return out


def drive(tmp_path, config, task=None, resume=False, **pool):
    config, folder = open_run(parse_config(config) if isinstance(config, dict) else config, resume)
    task = task or BoxTask()
    driver = SearchDriver(config, folder, task)
    checked = driver.searcher.tell

    def tell(candidate, evaluation):  # the study must hold the trial before the searcher hears of it
        ids = [c.id for c, _ in trials_to_records(driver.study)]
        assert candidate.id in ids, "told before recorded"
        checked(candidate, evaluation)

    driver.searcher.tell = tell
    return driver.drive(InlinePool(task, folder, **pool))


def recorded(folder: Path) -> list[tuple[Candidate, Evaluation]]:
    return trials_to_records(open_study(folder)[1])


def test_search_records_every_trial_and_meets_the_budget_exactly(tmp_path):
    events = []
    config, folder = open_run(parse_config(job(tmp_path)))
    driver = SearchDriver(config, folder, BoxTask())
    summary = driver.drive(InlinePool(BoxTask(), folder), progress=events.append)
    records = recorded(folder)
    assert summary.complete == len(records) == 13 and summary.failed == 0
    assert sorted(c.id for c, _ in records) == list(range(13))
    assert {p.name for p in folder.iterdir()} >= {CONFIG, JOURNAL, CHECKPOINT, LOG}
    checkpoint = json.loads((folder / CHECKPOINT).read_text())
    assert checkpoint["pending"] == [] and checkpoint["searcher"] == driver.searcher.state_dict()
    assert [e.event for e in events] == ["start"] + ["trial"] * 13 + ["end"]
    assert events[-1].hypervolume == summary.hypervolume > 0 and set(events[-1].best) == {"macs", "params"}
    log = (folder / LOG).read_text()
    evaluated = log.count(" complete: ")  # NSGA-II children can repeat a parent: answered without evaluating
    assert evaluated + log.count(" repeats the plans of ") == 13 and evaluated == len(driver.results.genomes)
    assert "done (evaluations): 13 complete, 0 failed" in log


def test_checkpoint_before_submit_and_record_before_tell(tmp_path):
    summary = drive(tmp_path, job(tmp_path, evaluators={"count": 3, "in_flight": 5}))  # the checks are inside
    assert summary.trials == 13


def test_errors_are_retried_then_recorded_failed_with_their_message(tmp_path):
    task = BoxTask(raises={2: 99, 4: 1})
    summary = drive(tmp_path, job(tmp_path), task)
    evaluations = {c.id: e for c, e in recorded(tmp_path / "run")}
    assert len(evaluations) == 13 and summary.failed == 1 and summary.retried == 3
    assert evaluations[2].state == "failed" and "out of memory on candidate 2" in evaluations[2].message
    assert "failed 3 times" in evaluations[2].message and evaluations[4].ok
    assert task.calls[2] == 3 and task.calls[4] == 2


def test_retries_wait_a_back_off_that_doubles(tmp_path):
    task = BoxTask(raises={2: 2})
    config = job(tmp_path, evaluators={"count": 2, "retries": 2, "retry_backoff_s": 0.2})
    summary = drive(tmp_path, config, task)
    first, second, third = task.times[2]
    assert summary.failed == 0 and second - first >= 0.2 and third - second >= 0.4


def test_a_search_whose_evaluations_all_fail_pauses_and_loses_no_trial(tmp_path):
    broken = BoxTask(raises={i: 99 for i in range(200)})  # e.g. the machine out of memory
    paused = r"3 candidates in a row failed on every retry \(the last: RuntimeError: out of memory"
    with pytest.raises(SearchPaused, match=paused):
        drive(tmp_path, job(tmp_path), broken)
    assert recorded(tmp_path / "run") == []  # nothing of the budget spent
    kept = [p["candidate"]["id"] for p in json.loads((tmp_path / "run" / CHECKPOINT).read_text())["pending"]]
    assert len(kept) >= 3
    summary = drive(tmp_path, tmp_path / "run", BoxTask(), resume=True)
    records = recorded(tmp_path / "run")
    ids = [c.id for c, _ in records]
    assert summary.trials == 13 and len(set(ids)) == 13 and set(kept) <= set(ids) and all(e.ok for _, e in records)


def test_dead_evaluators_lose_no_candidate(tmp_path):
    summary = drive(tmp_path, job(tmp_path), die={0, 5, 6})
    records = recorded(tmp_path / "run")
    assert summary.resubmitted == 3 and len(records) == 13 and all(e.ok for _, e in records)


def test_a_setup_error_of_the_job_stops_the_run_by_name(tmp_path):
    with pytest.raises(DecompError, match="evaluator setup failed: SpecError: unknown data spec 'mnsit'"):
        drive(tmp_path, job(tmp_path), BoxTask(fatal=True))


def test_a_time_budget_stops_asking_and_in_flight_candidates_are_recorded(tmp_path):
    summary = drive(tmp_path, job(tmp_path, budget={"seconds": 0.05}), BoxTask(sleep=0.02))
    records = recorded(tmp_path / "run")
    assert summary.stopped == "seconds" and summary.trials == len(records) >= 4
    assert json.loads((tmp_path / "run" / CHECKPOINT).read_text())["pending"] == []


@pytest.mark.parametrize("where", [("stop_submit", 1), ("stop_submit", 7), ("stop_wait", 1), ("stop_wait", 4)])
def test_a_driver_stopped_anywhere_resumes_to_exactly_the_budget(tmp_path, where):
    with pytest.raises(Stop):
        drive(tmp_path, job(tmp_path), **dict([where]))
    summary = drive(tmp_path, tmp_path / "run", resume=True)
    ids = [c.id for c, _ in recorded(tmp_path / "run")]
    assert summary.resumed and len(ids) == 13 and len(set(ids)) == 13


def test_a_driver_stopped_between_record_and_tell_resumes_exactly(tmp_path):
    config, folder = open_run(parse_config(job(tmp_path)))
    driver = SearchDriver(config, folder, BoxTask())
    told = driver.searcher.tell
    count = {"n": 0}

    def tell(candidate, evaluation):
        count["n"] += 1
        if count["n"] == 5:
            raise Stop  # the trial is in the study, the searcher never heard of it
        told(candidate, evaluation)

    driver.searcher.tell = tell
    with pytest.raises(Stop):
        driver.drive(InlinePool(BoxTask(), folder))
    assert len(recorded(folder)) == 5
    summary = drive(tmp_path, folder, resume=True)
    ids = [c.id for c, _ in recorded(folder)]
    assert summary.trials == 13 and sorted(ids) == list(range(13))
    checkpoint = Checkpoint.from_json(json.loads((folder / CHECKPOINT).read_text()))
    assert sorted(t[0] for t in checkpoint.searcher["history"]) == list(range(13))


def test_resuming_a_finished_run_does_nothing_and_keeps_the_normaliser(tmp_path):
    first = drive(tmp_path, job(tmp_path))
    stored = open_study(tmp_path / "run")[1].user_attrs[NORMALIZER_ATTR]
    again = drive(tmp_path, tmp_path / "run", resume=True)
    assert again.trials == first.trials == 13 and again.hypervolume == pytest.approx(first.hypervolume)
    assert open_study(tmp_path / "run")[1].user_attrs[NORMALIZER_ATTR] == stored


def test_reconcile_tells_missing_trials_and_returns_unrecorded_candidates():
    space = BoxSpace(2)
    objectives = [Objective("a"), Objective("b")]
    searcher = make_searcher("random", space, objectives)
    asked = searcher.ask(4)
    checkpoint = Checkpoint(searcher.state_dict(), [Pending(c) for c in asked], genes=list(space.names))
    records = [(c, Evaluation.of(c.id, [1.0, float(c.id)])) for c in asked[:2]]
    fresh = make_searcher("random", space, objectives)
    resubmit = reconcile(fresh, checkpoint, records, space)
    assert [p.candidate.id for p in resubmit] == [2, 3]
    assert [t.id for t in fresh.history] == [0, 1] and fresh.ask(1)[0].id == 4


def test_reconcile_refuses_states_no_run_leaves(tmp_path):
    space = BoxSpace(2)
    objectives = [Objective("a"), Objective("b")]
    searcher = make_searcher("random", space, objectives)
    (c,) = searcher.ask(1)
    record = [(c, Evaluation.of(c.id, [1.0, 2.0]))]
    with pytest.raises(SpecError, match="no checkpoint.json"):
        reconcile(searcher, None, record, space)
    with pytest.raises(SpecError, match="more than once"):
        reconcile(searcher, None, record * 2, space)
    with pytest.raises(SpecError, match="search space changed"):
        reconcile(searcher, Checkpoint(searcher.state_dict(), genes=["y0", "y1"]), record, space)
    early = make_searcher("random", space, objectives).state_dict()  # before the ask: never asked candidate 0
    with pytest.raises(SpecError, match="never asked"):
        reconcile(make_searcher("random", space, objectives), Checkpoint(early), record, space)


def test_bad_starts_and_resumes_are_named(tmp_path):
    with pytest.raises(SpecError, match="is not a run folder"):
        open_run(tmp_path, resume=True)
    with pytest.raises(SpecError, match="no job file or run folder"):
        open_run(tmp_path / "nope.yaml")
    config = job(tmp_path)
    with pytest.raises(SpecError, match="nothing to resume"):
        open_run(parse_config(config), resume=True)
    drive(tmp_path, config)
    with pytest.raises(SpecError, match="already holds a run; continue it with --resume"):
        open_run(parse_config(config))
    with pytest.raises(SpecError, match="is a run folder; continue it with --resume"):
        open_run(tmp_path / "run")
    changed = {**config, "budget": {"evaluations": 20}, "searcher": {"name": "random"}}
    with pytest.raises(SpecError, match="differs from the run's .* in: searcher, budget"):
        open_run(parse_config(changed), resume=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SpecError, match="exists and is not a run folder"):
        open_run(parse_config({**config, "run": {"folder": str(tmp_path / "other")}}))


def test_a_misspelt_searcher_setting_writes_nothing(tmp_path):
    bad = job(tmp_path, searcher={"name": "nsga2", "settings": {"populaton": 6}})
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(bad))
    with pytest.raises(SpecError, match="populaton.*population"):  # when the job file is read
        run_search(path)
    # a config that skipped the job-file check still fails before the driver writes anything
    unchecked = JobConfig.model_validate(bad)
    with pytest.raises(DecompError, match="populaton"):
        SearchDriver(unchecked, tmp_path / "run", BoxTask())
    assert not (tmp_path / "run").exists()
    summary = drive(tmp_path, job(tmp_path))  # the corrected job runs in the same folder, no clean-up needed
    assert summary.trials == 13


def test_a_failed_fresh_start_leaves_the_folder_as_it_was(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(storage=url, study_name="box", directions=["maximize"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    config = parse_config(job(tmp_path, run={"folder": str(tmp_path / "run"), "storage": url}))
    with pytest.raises(DecompError, match="already exists with objectives"):
        SearchDriver(config, tmp_path / "run", BoxTask())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["notes.txt"]


def test_a_study_with_other_objectives_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(storage=url, study_name="box", directions=["maximize"])
    config = job(tmp_path, run={"folder": str(tmp_path / "run"), "storage": url})
    with pytest.raises(DecompError, match="already exists with objectives"):
        drive(tmp_path, config)


def test_an_rdb_storage_holds_the_study_and_resumes(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    config = job(tmp_path, run={"folder": str(tmp_path / "run"), "storage": url})
    with pytest.raises(Stop):
        drive(tmp_path, config, stop_wait=3)
    summary = drive(tmp_path, tmp_path / "run", resume=True)
    study = optuna.load_study(study_name="box", storage=url)
    assert summary.trials == len(study.trials) == 13 and not (tmp_path / "run" / JOURNAL).exists()


def test_a_run_folder_has_one_driver_at_a_time(tmp_path):
    config, folder = open_run(parse_config(job(tmp_path)))
    first = SearchDriver(config, folder, BoxTask())
    try:
        with pytest.raises(SpecError, match="being driven by another process"):
            SearchDriver(config, folder, BoxTask())
    finally:
        first.close()


def test_an_evaluation_error_outlives_pickling():
    error = Evaluator(BoxTask(raises={0: 1})).evaluate(Candidate(0, "x", (0.1, 0.2, 0.3)))
    assert isinstance(error, EvaluationError) and "RuntimeError: out of memory" in error.message
    assert "Traceback" in error.traceback and not error.fatal


def test_model_task_measures_the_pruned_model_and_prices_it(tmp_path):
    config = parse_config(
        job(tmp_path, objectives=["agreement", "macs"], latency={"batch_size": 2}, accuracy={"max_samples": 16})
    )
    task = pickle.loads(pickle.dumps(ModelTask(config)))  # what an actor receives
    space = task.space()
    searcher = make_searcher("random", space, config.objective_records())
    whole = searcher.candidate(space.start(np.random.default_rng(0)))
    lowest = searcher.candidate([g.high if g.name.startswith("keep") else g.low for g in space.genes])
    measured = task.evaluate(whole), task.evaluate(lowest)
    full, pruned = (m.evaluation for m in measured)
    assert full.ok and pruned.ok and not whole.pruning.groups and lowest.pruning.groups
    assert all(m.weights for m in measured) and task.levels == ("bn",)  # no data: agreement, one level
    assert full.values[0] == 1.0 and 0.0 <= pruned.values[0] <= 1.0  # agreement with the unpruned model
    assert pruned.values[1] < full.values[1] and full.metrics["parts"] >= 1


def test_model_task_names_bad_inputs(tmp_path):
    with pytest.raises(SpecError, match="'accuracy' needs labelled data: give `data`"):
        ModelTask(parse_config(job(tmp_path, objectives=["accuracy", "macs"])))
    with pytest.raises(SpecError, match="unknown data spec 'mnsit'"):
        ModelTask(parse_config(job(tmp_path, data="mnsit")))
    with pytest.raises(SpecError, match="latency.calibration: no file at .*cal.json"):
        ModelTask(parse_config(job(tmp_path, latency={"calibration": "cal.json"})), base=tmp_path)


def test_cli_reports_a_finished_run_without_ray_and_names_bad_input(tmp_path):
    import cluster.cli_search  # noqa: F401  (registers `decomp search` on the app)
    from cluster.cli import app

    config = parse_config(job(tmp_path, budget={"evaluations": 4}))
    drive(tmp_path, config, task=ModelTask(config))
    result = CliRunner().invoke(app, ["search", "--resume", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "4 (4 complete, 0 failed)" in result.output and not ray.is_initialized()
    result = CliRunner().invoke(app, ["search", str(tmp_path / "run")])
    assert isinstance(result.exception, SpecError) and "continue it with --resume" in str(result.exception)


class LevelBox(BoxTask):
    """BoxTask with three fidelity levels: a level's first objective is the top's plus noise that shrinks as
    the level rises; each result comes with 'weights' naming the candidate and level."""

    levels = ("bn", "short", "full")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.at: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def evaluate(self, candidate: Candidate, level: int = 0) -> Measured:
        self.at[level].append(candidate.id)
        x = candidate.genome
        values = [x[0] + 0.05 * (2 - level) * np.sin(7 * x[1]), 1 + x[1] - x[0] ** 0.5 + x[2]]
        evaluation = Evaluation.of(candidate.id, values, metrics={"level": float(level)})
        return Measured(evaluation, weights=f"{candidate.id}@{level}".encode())


def test_candidates_climb_the_levels_and_are_recorded_once_with_their_lower_results(tmp_path):
    task = LevelBox()
    summary = drive(tmp_path, job(tmp_path, budget={"evaluations": 27}), task)
    evaluated = [c.id for c, e in recorded(tmp_path / "run") if "duplicate_of" not in e.metrics]
    assert summary.trials == 27 and sorted(task.at[0]) == sorted(evaluated)  # every one starts at the bottom
    assert set(task.at[2]) <= set(task.at[1]) <= set(task.at[0]) and 3 <= len(task.at[1]) <= 16
    study = open_study(tmp_path / "run")[1]
    for trial in study.trials:
        cid, level = trial.user_attrs["candidate_id"], int(trial.user_attrs["metric:level"])
        assert level == (2 if cid in task.at[2] else 1 if cid in task.at[1] else 0)
        assert sorted(trial.intermediate_values) == (list(range(level + 1)) if level else [])
        kept = tmp_path / "run" / "weights" / f"{cid}.safetensors"
        if kept.exists():  # the weights of the level the trial holds
            assert kept.read_bytes() == f"{cid}@{level}".encode()
    top = [cid for cid in task.at[2]]
    assert all((tmp_path / "run" / "weights" / f"{cid}.safetensors").exists() for cid in top)


def test_a_run_stopped_between_levels_resumes_them(tmp_path):
    config = job(tmp_path, budget={"evaluations": 18})
    with pytest.raises(Stop):
        drive(tmp_path, config, LevelBox(), stop_wait=6)
    pending = json.loads((tmp_path / "run" / CHECKPOINT).read_text())["pending"]
    task = LevelBox()
    summary = drive(tmp_path, tmp_path / "run", task, resume=True)
    records = recorded(tmp_path / "run")
    assert summary.trials == len(records) == 18 and sorted(c.id for c, _ in records) == list(range(18))
    resumed_at = {p["candidate"]["id"]: p["level"] for p in pending}
    for cid, level in resumed_at.items():  # a pending candidate goes on from the level it had reached
        assert cid in task.at[level] and all(cid not in task.at[lower] for lower in range(level))


class BaselineBox(BoxSpace):
    """A 3-gene box whose baselines are the first three genomes asked, each dominated by the one before."""

    def baselines(self):
        return [(1.0, 1.0, 0.8), (1.0, 1.0, 0.9), (1.0, 1.0, 1.0)]


class BaselineLevels(LevelBox):
    def space(self):
        return BaselineBox(3)


def test_the_baselines_climb_every_level(tmp_path):
    task = BaselineLevels()
    drive(tmp_path, job(tmp_path, budget={"evaluations": 12}), task)
    # successive halving alone would stop baselines 1 and 2 at the bottom: each is dominated by baseline 0
    assert {0, 1, 2} <= set(task.at[2]) and len(task.at[2]) < 12
    levels = {c.id: int(e.metrics["level"]) for c, e in recorded(tmp_path / "run")}
    assert [levels[i] for i in range(3)] == [2, 2, 2]


class TwoBits(BoxTask):
    """Three 0/1 genes: 8 genomes, so a searcher's proposals repeat."""

    def space(self):
        return Space([Gene(f"b{i}", 0, 1, integer=True) for i in range(3)])


def test_a_repeated_genome_costs_no_evaluation(tmp_path):
    task = TwoBits()
    config = job(tmp_path, searcher={"name": "random", "seed": 0}, budget={"evaluations": 20})
    summary = drive(tmp_path, config, task)
    records = recorded(tmp_path / "run")
    first: dict[tuple, int] = {}  # genome -> the candidate first recorded with it (the one evaluated)
    for c, _ in records:
        first.setdefault(tuple(c.genome), c.id)
    assert summary.trials == len(records) == 20 and len(first) < 20
    assert sorted(task.calls) == sorted(first.values()) and all(n == 1 for n in task.calls.values())
    by_id = {c.id: e for c, e in records}
    for c, e in records:
        original = first[tuple(c.genome)]
        assert e.values == by_id[original].values
        assert e.metrics.get("duplicate_of", original) == original
        assert ("duplicate_of" in e.metrics) == (c.id != original)


def test_candidates_with_the_same_plans_are_the_same_candidate(tmp_path):
    from cluster.results import identity
    from decomp.partition.plan import PartitionPlan
    from decomp.pruning import GroupChoice, PruningPlan

    pruning = PruningPlan(groups=(GroupChoice("conv1", keep_ratio=0.5),))
    partition = PartitionPlan((("a", 0), ("b", 0)), "pipeline")
    one_part = Candidate(0, "x", (0, 1, 0.25), pruning, partition)  # a cut gene a one-part plan ignores
    same = Candidate(1, "x", (0, 1, 0.75), pruning, partition)
    other = Candidate(2, "x", (0, 1, 0.75), PruningPlan(), partition)
    assert identity(one_part) == identity(same) != identity(other)
    assert identity(Candidate(3, "x", (0.5,))) == (0.5,)  # no plans: the genome


def test_groups_the_pruning_check_refuses_leave_the_search_space(tmp_path):
    from cluster.task import job_model

    config = parse_config(job(tmp_path, model="python:tests.tiny_prunable:topology?name=channel_flip"))
    built = job_model(config)
    assert "conv" not in built.index and "conv" in built.index.skipped  # flipped channels: refused
    assert "conv" not in (built.graph.nx.graph.get("groups") or {})
